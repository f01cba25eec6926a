"""The image-data path: image folders and their caches, the built-in datasets, batch loaders, augmentation.

``folders`` reads an ImageFolder tree (or the built-in synthetic shapes from ``shapes``) into a cached
uint8 array; ``datasets`` builds the train/val datasets a recipe names and the loaders that batch
them; ``augment`` holds the batch transforms (RandAugment, Mixup/CutMix, Random Erasing) and the
soft-target loss; ``download`` fetches a public subset when the user asks for it. This layer imports
only ``config`` and ``runtime``: nothing of the trainer.
"""
