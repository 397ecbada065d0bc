"""Image listing, decoding and augmentation: the bottom of the data's way."""
