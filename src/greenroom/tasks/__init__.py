"""Tasks: deploy and delete requests, run asynchronously by workers under a lease."""
