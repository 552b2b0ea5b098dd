"""One module per verb the user knows. Each takes a `Context` and returns a typed report."""
