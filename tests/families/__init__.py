"""The model families (MACE, NequIP, metatrain PET): their venvs, model builds and references."""
