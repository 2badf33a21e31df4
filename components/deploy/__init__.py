"""deploy: roll the promoted model out to serving, then move the registry alias `champion`."""
