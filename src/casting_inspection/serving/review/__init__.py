"""The review station: a page where a person settles what the model would not decide."""
