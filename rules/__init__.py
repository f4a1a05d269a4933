"""diag's built-in rules, one module per group, registered through the `diag.rules` entry point."""
