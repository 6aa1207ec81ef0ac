"""The synthetic head's anatomy (``piaug.data.synthetic``) in its template frame, the unit
square (u to the right, v down; face to the right): the named landmark points, the outlines of
the bones, soft tissue and airway, the exposure field and the film label's font.

Every shape is built from the exact landmark points, so every landmark is a vertex, junction or
extremum of the anatomy; ``piaug.data.phantom`` draws the shapes.
"""

import numpy as np

# Named template points (u to the right, v down, unit square).  Shapes below are built from
# these exact points, so every landmark is a vertex / junction / extremum of the anatomy.
_S = (0.440, 0.462)  # sella: centre of the sella turcica notch
_N = (0.43 + 0.34 * 0.9659258262890683, 0.36 + 0.30 * 0.25881904510252074)  # vault/cut corner
_OR = (0.675, 0.475)  # orbitale: lowest point of the orbit rim (centre line)
_PO = (0.300, 0.470)  # porion: top of the ear-rod ring (centre line)
_A, _B = (0.772, 0.628), (0.755, 0.775)
_POG, _ME, _GN, _GO = (0.782, 0.825), (0.735, 0.866), (0.766, 0.856), (0.385, 0.775)
_LIT, _UIT = (0.797, 0.703), (0.812, 0.718)
_UL, _LL, _SN, _SPOG = (0.875, 0.655), (0.868, 0.715), (0.855, 0.585), (0.855, 0.815)
_PNS, _ANS, _AR, _BA = (0.545, 0.595), (0.805, 0.588), (0.365, 0.575), (0.350, 0.632)
_PCL, _COR = (0.395, 0.425), (0.470, 0.565)
_C2, _C3S, _C3I = (0.300, 0.720), (0.305, 0.742), (0.312, 0.802)

LANDMARK_NAMES: tuple[str, ...] = (
    "sella",
    "nasion",
    "orbitale",
    "porion",
    "subspinale",
    "supramentale",
    "pogonion",
    "menton",
    "gnathion",
    "gonion",
    "lower_incisal_incision",
    "upper_incisal_incision",
    "upper_lip",
    "lower_lip",
    "subnasale",
    "soft_tissue_pogonion",
    "posterior_nasal_spine",
    "anterior_nasal_spine",
    "articulare",
    "basion",
    "posterior_clinoid",
    "coronoid_tip",
    "c2_anterior_inferior",
    "c3_anterior_superior",
    "c3_anterior_inferior",
)
TEMPLATE_LANDMARKS = np.array(
    [
        _S,
        _N,
        _OR,
        _PO,
        _A,
        _B,
        _POG,
        _ME,
        _GN,
        _GO,
        _LIT,
        _UIT,
        _UL,
        _LL,
        _SN,
        _SPOG,
        _PNS,
        _ANS,
        _AR,
        _BA,
        _PCL,
        _COR,
        _C2,
        _C3S,
        _C3I,
    ],
    dtype=np.float64,
)
MAX_LANDMARKS = len(LANDMARK_NAMES)

FACE = [
    (0.60, 0.12),
    (0.74, 0.16),
    (0.80, 0.28),
    (0.815, 0.36),
    (0.80, 0.42),
    (0.86, 0.50),
    (0.905, 0.545),
    (0.895, 0.565),
    _SN,
    (0.865, 0.62),
    _UL,
    (0.853, 0.685),
    _LL,
    (0.835, 0.765),
    _SPOG,
    (0.835, 0.865),
    (0.79, 0.895),
    (0.68, 0.91),
    (0.64, 0.95),
    (0.63, 1.3),
    (0.45, 1.3),
    (0.45, 0.40),
]
NECK = [(0.12, 1.3), (0.13, 0.80), (0.16, 0.62), (0.35, 0.40), (0.55, 0.40), (0.55, 1.3)]
CRANIAL_BASE = [
    _PCL,
    (0.412, 0.430),
    (0.414, 0.465),
    (0.440, 0.490),
    (0.466, 0.465),
    (0.470, 0.440),
    (0.490, 0.438),
    (0.560, 0.470),
    (0.570, 0.530),
    (0.480, 0.560),
    (0.385, 0.625),
    _BA,
    _AR,
    (0.385, 0.500),
]
NASAL = [_N, (0.800, 0.492), (0.792, 0.498), (0.752, 0.450)]
MAXILLA = [
    _PNS,
    (0.600, 0.583),
    (0.740, 0.583),
    _ANS,
    (0.780, 0.600),
    _A,
    (0.790, 0.675),
    (0.765, 0.682),
    (0.730, 0.640),
    (0.620, 0.612),
    (0.570, 0.607),
]
MAX_BODY = [(0.56, 0.48), (0.70, 0.49), (0.755, 0.53), (0.775, 0.585), (0.55, 0.59)]
MANDIBLE = [
    (0.365, 0.515),
    (0.385, 0.530),
    (0.390, 0.560),
    (0.430, 0.600),
    _COR,
    (0.475, 0.620),
    (0.500, 0.700),
    (0.620, 0.730),
    (0.720, 0.735),
    (0.765, 0.725),
    _B,
    _POG,
    _GN,
    _ME,
    (0.560, 0.830),
    (0.450, 0.790),
    _GO,
    (0.370, 0.650),
    _AR,
    (0.352, 0.535),
]
UPPER_INCISOR = [
    (0.755, 0.610),
    (0.775, 0.615),
    (0.816, 0.690),
    _UIT,
    (0.790, 0.697),
    (0.745, 0.625),
]
LOWER_INCISOR = [
    (0.725, 0.800),
    (0.745, 0.792),
    (0.801, 0.722),
    _LIT,
    (0.781, 0.716),
    (0.713, 0.795),
]
MOLARS = [
    [
        (0.600, 0.615),
        (0.665, 0.615),
        (0.670, 0.665),
        (0.655, 0.677),
        (0.615, 0.677),
        (0.600, 0.665),
    ],
    [(0.602, 0.681), (0.668, 0.681), (0.664, 0.735), (0.606, 0.735)],
    [(0.680, 0.618), (0.715, 0.620), (0.718, 0.676), (0.684, 0.678)],
    [(0.682, 0.682), (0.718, 0.682), (0.714, 0.733), (0.686, 0.733)],
]
VERTEBRAE = [
    [
        (0.270, 0.600),
        (0.290, 0.615),
        (0.295, 0.680),
        _C2,
        (0.235, 0.725),
        (0.230, 0.640),
        (0.250, 0.615),
    ],
    [(0.240, 0.747), _C3S, _C3I, (0.245, 0.806)],
    [(0.250, 0.826), (0.316, 0.820), (0.322, 0.880), (0.256, 0.886)],
]
HYOID = [(0.515, 0.878), (0.560, 0.872), (0.566, 0.888), (0.520, 0.895)]
VAULT_C, VAULT_R, VAULT_T = (0.43, 0.36), (0.34, 0.30), 0.032
CUT = (_N, (0.10, 0.58))  # cranial-base line through nasion; the vault is kept above it
FIELD_C, FIELD_R = (0.56, 0.47), (0.58, 0.55)  # collimated exposure field (image frame)
AIRWAY = [(0.375, 0.56), (0.350, 0.70), (0.350, 0.97)]
FONT = {  # 3 x 5 blocky digits, rows top to bottom
    "0": "111101101101111",
    "1": "010110010010111",
    "2": "111001111100111",
    "3": "111001111001111",
    "4": "101101111001001",
    "5": "111100111001111",
    "6": "111100111101111",
    "7": "111001010010010",
    "8": "111101111101111",
    "9": "111101111001111",
    "-": "000000111000000",
}

# The orbit rim and the ear-rod ring: (centre, radii) of an elliptic ring through orbitale (its
# lowest point) and porion (its top).
ORBIT_RING = ((_OR[0], _OR[1] - 0.045), (0.05, 0.045))
EAR_RING = ((_PO[0], _PO[1] + 0.03), (0.03, 0.03))
