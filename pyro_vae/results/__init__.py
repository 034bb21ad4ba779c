"""Result types: log-likelihood evaluations, reports and their arviz form."""
