"""Stage 2, detect: attribute rows to containers (inventory, join), window them and run the rules that emit alert candidates."""
