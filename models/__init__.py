"""DK-CLIP: the video model (``models.dkclip``), its objective (``models.loss``) and how it is built from
the config (``models.builder``)."""
