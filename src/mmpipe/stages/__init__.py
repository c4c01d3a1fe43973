"""Stage builders the jobs (and later the server) share: data + function + resources."""
