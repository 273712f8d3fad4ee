"""The 17 HeadCTSegmentation classes (Cai et al. 2020): ids, names and display colours."""

CLASS_NAMES: list[str] = [
    "background",
    "brain parenchyma",
    "CSF (subarachnoid)",
    "dura / venous sinus",
    "septum pellucidum",
    "cerebellum",
    "caudate",
    "lentiform nucleus",
    "insular cortex",
    "internal capsule",
    "ventricles",
    "central sulcus",
    "frontal lobe",
    "parietal lobe",
    "occipital lobe",
    "temporal lobe",
    "thalamus",
]
NUM_CLASSES = len(CLASS_NAMES)

# One colour per class, used by every segmentation figure (RGB in 0..1).
CLASS_COLORS: list[tuple[float, float, float]] = [
    (0.0, 0.0, 0.0),
    (0.85, 0.85, 0.85),
    (0.35, 0.65, 1.0),
    (1.0, 0.85, 0.2),
    (1.0, 0.4, 0.7),
    (0.3, 0.8, 0.3),
    (0.9, 0.3, 0.2),
    (0.6, 0.3, 0.9),
    (1.0, 0.6, 0.1),
    (0.2, 0.9, 0.9),
    (0.1, 0.2, 0.9),
    (0.95, 0.95, 0.3),
    (0.55, 0.75, 0.45),
    (0.8, 0.55, 0.35),
    (0.45, 0.55, 0.8),
    (0.75, 0.45, 0.6),
    (0.9, 0.1, 0.5),
]
