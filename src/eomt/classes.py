"""Label spaces of the datasets the paper uses, as data: class names, stuff ids and id mappings.

Contiguous class ids are what the network predicts (0..C-1). The mappings translate the ids found in
the annotation files into them, following the official EoMT data modules (tue-mps/eomt `datasets/`):

- COCO panoptic: 133 classes, 80 things (ids 0..79) then 53 stuff (80..132), ordered by the sorted
  COCO panoptic category ids (1..200, with gaps); names as in panopticapi's category list.
- COCO instance: the 80 things, same order and names.
- ADE20K (SceneParsing, 150 classes): semantic id = label PNG value - 1 (PNG 0 = "other", dropped).
  Panoptic: stuff = the 50 ids of the official ADE20K panoptic configs; things come from the
  instance PNGs, whose category (1..100) maps to an ADE-150 id through `ADE20K_INSTANCE_MAPPING`.
- Cityscapes: the 19 train ids; `CITYSCAPES_LABEL_TO_TRAIN_ID[label_id]` maps the `*_labelIds.png`
  values 0..33 to train ids, 255 for the ids ignored in evaluation.
- synthetic: the shapes and stuff regions of `eomt.data.synthetic.SyntheticScenes`.
"""

from __future__ import annotations

from eomt.errors import OptionError

# ----------------------------------------------------------------------------------------------
# COCO
# ----------------------------------------------------------------------------------------------

# The 133 COCO panoptic category ids in increasing order; position = contiguous class id.
_COCO_PANOPTIC_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90, 92, 93, 95, 100, 107, 109, 112, 118, 119, 122, 125, 128, 130, 133, 138,
    141, 144, 145, 147, 148, 149, 151, 154, 155, 156, 159, 161, 166, 168, 171, 175, 176, 177, 178,
    180, 181, 184, 185, 186, 187, 188, 189, 190, 191, 192, 193, 194, 195, 196, 197, 198, 199, 200,
)

COCO_PANOPTIC_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush", "banner", "blanket", "bridge", "cardboard", "counter",
    "curtain", "door-stuff", "floor-wood", "flower", "fruit", "gravel", "house", "light",
    "mirror-stuff", "net", "pillow", "platform", "playingfield", "railroad", "river", "road",
    "roof", "sand", "sea", "shelf", "snow", "stairs", "tent", "towel", "wall-brick", "wall-stone",
    "wall-tile", "wall-wood", "water-other", "window-blind", "window-other", "tree-merged",
    "fence-merged", "ceiling-merged", "sky-other-merged", "cabinet-merged", "table-merged",
    "floor-other-merged", "pavement-merged", "mountain-merged", "grass-merged", "dirt-merged",
    "paper-merged", "food-other-merged", "building-other-merged", "rock-merged",
    "wall-other-merged", "rug-merged",
)

COCO_PANOPTIC_STUFF: tuple[int, ...] = tuple(range(80, 133))

# COCO panoptic category id (1..200, 133 used) -> contiguous id 0..132.
COCO_PANOPTIC_CATEGORY_IDS: dict[int, int] = {cat: i for i, cat in enumerate(_COCO_PANOPTIC_IDS)}

# The instance task uses the 80 thing categories, which are the first 80 panoptic ones.
COCO_INSTANCE_NAMES: tuple[str, ...] = COCO_PANOPTIC_NAMES[:80]
# COCO instance category id (1..90, 80 used) -> contiguous id 0..79.
COCO_INSTANCE_CATEGORY_IDS: dict[int, int] = {
    cat: i for i, cat in enumerate(_COCO_PANOPTIC_IDS[:80])
}

# ----------------------------------------------------------------------------------------------
# ADE20K
# ----------------------------------------------------------------------------------------------

# objectInfo150 names (as in detectron2's metadata, whitespace stripped); index = PNG value - 1.
ADE20K_NAMES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road, route", "bed", "window", "grass",
    "cabinet", "sidewalk, pavement", "person", "earth, ground", "door", "table", "mountain, mount",
    "plant", "curtain", "chair", "car", "water", "painting, picture", "sofa", "shelf", "house",
    "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock, stone",
    "wardrobe, closet, press", "lamp", "tub", "rail", "cushion", "base, pedestal, stand", "box",
    "column, pillar", "signboard, sign", "chest of drawers, chest, bureau, dresser", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator, icebox", "grandstand, covered stand",
    "path", "stairs", "runway", "case, display case, showcase, vitrine",
    "pool table, billiard table, snooker table", "pillow", "screen door, screen",
    "stairway, staircase", "river", "bridge, span", "bookcase", "blind, screen", "coffee table",
    "toilet, can, commode, crapper, pot, potty, stool, throne", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm, palm tree", "kitchen island", "computer", "swivel chair", "boat",
    "bar", "arcade machine", "hovel, hut, hutch, shack, shanty", "bus", "towel", "light", "truck",
    "tower", "chandelier", "awning, sunshade, sunblind", "street lamp", "booth", "tv", "plane",
    "dirt track", "clothes", "pole", "land, ground, soil",
    "bannister, banister, balustrade, balusters, handrail",
    "escalator, moving staircase, moving stairway", "ottoman, pouf, pouffe, puff, hassock",
    "bottle", "buffet, counter, sideboard", "poster, posting, placard, notice, bill, card", "stage",
    "van", "ship", "fountain", "conveyer belt, conveyor belt, conveyer, conveyor, transporter",
    "canopy", "washer, automatic washer, washing machine", "plaything, toy", "pool", "stool",
    "barrel, cask", "basket, handbasket", "falls", "tent", "bag", "minibike, motorbike", "cradle",
    "oven", "ball", "food, solid food", "step, stair", "tank, storage tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket, cover",
    "sculpture", "hood, exhaust hood", "sconce", "vase", "traffic light", "tray", "trash can",
    "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass, drinking glass", "clock", "flag",
)

# The 50 stuff ids of the official ADE20K panoptic configs; the other 100 ids are things.
ADE20K_PANOPTIC_STUFF: tuple[int, ...] = (
    0, 1, 2, 3, 4, 5, 6, 9, 11, 13, 16, 17, 21, 25, 26, 28, 29, 34, 40, 46, 48, 51, 52, 54, 59, 60,
    61, 63, 68, 77, 79, 84, 91, 94, 96, 99, 100, 101, 105, 106, 109, 113, 114, 117, 122, 128, 131,
    140, 141, 145,
)

# ADE-150 id of each instance category, indexed by (instance PNG category - 1).
_ADE20K_INSTANCE_TO_150: tuple[int, ...] = (
    7, 8, 10, 12, 14, 15, 18, 19, 20, 22, 23, 24, 27, 30, 31, 32, 33, 35, 36, 37, 38, 39, 41, 42,
    43, 44, 45, 47, 49, 50, 53, 55, 56, 57, 58, 62, 64, 65, 66, 67, 69, 70, 71, 72, 73, 74, 75, 76,
    78, 80, 81, 82, 83, 85, 86, 87, 88, 89, 90, 92, 93, 95, 97, 98, 102, 103, 104, 107, 108, 110,
    111, 112, 115, 116, 118, 119, 120, 121, 123, 124, 125, 126, 127, 129, 130, 132, 133, 134, 135,
    136, 137, 138, 139, 142, 143, 144, 146, 147, 148, 149,
)

# Instance PNG category (channel 0 value, 1..100) -> ADE-150 id (0..149).
ADE20K_INSTANCE_MAPPING: dict[int, int] = {
    cat + 1: ade for cat, ade in enumerate(_ADE20K_INSTANCE_TO_150)
}

# ----------------------------------------------------------------------------------------------
# Cityscapes
# ----------------------------------------------------------------------------------------------

# The 19 classes evaluated, index = train id.
CITYSCAPES_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)

# `*_gtFine_labelIds.png` value (0..33) -> train id; 255 for classes ignored in evaluation.
CITYSCAPES_LABEL_TO_TRAIN_ID: tuple[int, ...] = (
    255, 255, 255, 255, 255, 255, 255, 0, 1, 255, 255, 2, 3, 4, 255, 255, 255, 5, 255, 6, 7, 8, 9,
    10, 11, 12, 13, 14, 15, 255, 255, 16, 17, 18,
)

# ----------------------------------------------------------------------------------------------
# Synthetic scenes (eomt.data.synthetic): things first, then stuff.
# ----------------------------------------------------------------------------------------------

SYNTHETIC_THING_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
SYNTHETIC_STUFF_NAMES: tuple[str, ...] = ("sky", "ground")
SYNTHETIC_NAMES: tuple[str, ...] = SYNTHETIC_THING_NAMES + SYNTHETIC_STUFF_NAMES
SYNTHETIC_STUFF: tuple[int, ...] = tuple(range(len(SYNTHETIC_THING_NAMES), len(SYNTHETIC_NAMES)))

# (dataset, task) -> (class names, stuff ids). Semantic tasks have no thing/stuff distinction.
_LABEL_SPACES: dict[tuple[str, str], tuple[tuple[str, ...], tuple[int, ...]]] = {
    ("coco", "panoptic"): (COCO_PANOPTIC_NAMES, COCO_PANOPTIC_STUFF),
    ("coco", "instance"): (COCO_INSTANCE_NAMES, ()),
    ("ade20k", "semantic"): (ADE20K_NAMES, ()),
    ("ade20k", "panoptic"): (ADE20K_NAMES, ADE20K_PANOPTIC_STUFF),
    ("cityscapes", "semantic"): (CITYSCAPES_NAMES, ()),
    ("synthetic", "panoptic"): (SYNTHETIC_NAMES, SYNTHETIC_STUFF),
    ("synthetic", "instance"): (SYNTHETIC_THING_NAMES, ()),
    ("synthetic", "semantic"): (SYNTHETIC_NAMES, ()),
}

LABEL_SPACES: tuple[tuple[str, str], ...] = tuple(_LABEL_SPACES)


def label_space(dataset: str, task: str) -> tuple[list[str], list[int]]:
    """(class names, stuff class ids) of `dataset` for `task`; ids are contiguous 0..C-1.

    Raises ValueError naming the known (dataset, task) pairs when the pair is unknown.
    """
    key = (dataset.lower(), task.lower())
    if key not in _LABEL_SPACES:
        known = ", ".join(f"{d}/{t}" for d, t in _LABEL_SPACES)
        raise OptionError(
            f"label space: unknown dataset/task {dataset}/{task}; expected one of {known}"
        )
    names, stuff = _LABEL_SPACES[key]
    return list(names), list(stuff)
