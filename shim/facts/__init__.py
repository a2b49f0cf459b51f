"""One module per kind of fact. Each returns plain data and changes nothing it looks at."""
