"""The only code that talks to huggingface_hub: variants, download, import, locks."""
