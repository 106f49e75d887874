"""People who log in (investigators, operators, managers, auditors), their roles and their tokens."""
