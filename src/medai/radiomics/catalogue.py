"""Feature catalogue: column name → IBSI feature code, family and aggregation.

Column names are ``{family}_{feature}`` for the per-ROI families and
``{family}_{feature}_{aggregation}`` for texture; codes are the IBSI chapter 1
identifiers (Zwanenburg et al., Radiology 2020;295:328–338).
"""

from __future__ import annotations

from dataclasses import dataclass

from medai.radiomics.settings import TEXTURE_AGGREGATIONS, Aggregation, Family

__all__ = [
    "AGGREGATION_CODES",
    "ZONE_KEYS",
    "FeatureInfo",
    "family_aggregations",
    "feature_catalogue",
    "zone_names",
]


@dataclass(frozen=True)
class FeatureInfo:
    """Metadata of one feature column."""

    name: str
    family: Family
    family_code: str
    ibsi_name: str
    ibsi_code: str
    aggregation: str
    aggregation_code: str


_FAMILY_CODES = {
    Family.MORPHOLOGY: "HCUG",
    Family.LOCAL_INTENSITY: "9ST6",
    Family.STATISTICS: "UHIW",
    Family.HISTOGRAM: "ZVCW",
    Family.IVH: "P88C",
    Family.GLCM: "LFYI",
    Family.GLRLM: "TP0I",
    Family.GLSZM: "9SAK",
    Family.GLDZM: "VMDZ",
    Family.NGTDM: "IPET",
    Family.NGLDM: "REK0",
}

AGGREGATION_CODES = {
    Aggregation.D2_AVERAGED: "BTW3",
    Aggregation.D2_SLICE_MERGED: "SUJT",
    Aggregation.D25_DIRECTION_MERGED: "JJUI",
    Aggregation.D25_MERGED: "ZW7Z",
    Aggregation.D3_AVERAGED: "ITBB",
    Aggregation.D3_MERGED: "IAZD",
    Aggregation.D2: "8QNN",
    Aggregation.D25: "62GR",
    Aggregation.D3: "KOBO",
}
_VOLUME_CODE = "DHQ4"

_TABLES: dict[Family, list[tuple[str, str, str]]] = {
    Family.MORPHOLOGY: [
        ("volume", "Volume (mesh)", "RNU0"),
        ("vol_approx", "Volume (voxel counting)", "YEKZ"),
        ("area_mesh", "Surface area (mesh)", "C0JK"),
        ("av", "Surface to volume ratio", "2PR5"),
        ("comp_1", "Compactness 1", "SKGS"),
        ("comp_2", "Compactness 2", "BQWJ"),
        ("sph_dispr", "Spherical disproportion", "KRCK"),
        ("sphericity", "Sphericity", "QCFX"),
        ("asphericity", "Asphericity", "25C7"),
        ("com", "Centre of mass shift", "KLMA"),
        ("diam", "Maximum 3D diameter", "L0JK"),
        ("pca_major", "Major axis length", "TDIC"),
        ("pca_minor", "Minor axis length", "P9VJ"),
        ("pca_least", "Least axis length", "7J51"),
        ("pca_elongation", "Elongation", "Q3CK"),
        ("pca_flatness", "Flatness", "N17B"),
        ("v_dens_aabb", "Volume density (axis-aligned bounding box)", "PBX1"),
        ("a_dens_aabb", "Area density (axis-aligned bounding box)", "R59B"),
        ("v_dens_aee", "Volume density (approximate enclosing ellipsoid)", "6BDE"),
        ("a_dens_aee", "Area density (approximate enclosing ellipsoid)", "RDD2"),
        ("v_dens_conv_hull", "Volume density (convex hull)", "R3ER"),
        ("a_dens_conv_hull", "Area density (convex hull)", "7T7F"),
        ("integ_int", "Integrated intensity", "99N0"),
        ("moran_i", "Moran's I index", "N365"),
        ("geary_c", "Geary's C measure", "NPT7"),
    ],
    Family.LOCAL_INTENSITY: [
        ("peak_loc", "Local intensity peak", "VJGA"),
        ("peak_glob", "Global intensity peak", "0F91"),
    ],
    Family.STATISTICS: [
        ("mean", "Mean intensity", "Q4LE"),
        ("var", "Intensity variance", "ECT3"),
        ("skew", "Intensity skewness", "KE2A"),
        ("kurt", "(Excess) intensity kurtosis", "IPH6"),
        ("median", "Median intensity", "Y12H"),
        ("min", "Minimum intensity", "1GSF"),
        ("p10", "10th intensity percentile", "QG58"),
        ("p90", "90th intensity percentile", "8DWT"),
        ("max", "Maximum intensity", "84IY"),
        ("iqr", "Intensity interquartile range", "SALO"),
        ("range", "Intensity range", "2OJQ"),
        ("mad", "Intensity-based mean absolute deviation", "4FUA"),
        ("rmad", "Intensity-based robust mean absolute deviation", "1128"),
        ("medad", "Intensity-based median absolute deviation", "N72L"),
        ("cov", "Intensity-based coefficient of variation", "7TET"),
        ("qcod", "Intensity-based quartile coefficient of dispersion", "9S40"),
        ("energy", "Intensity-based energy", "N8CA"),
        ("rms", "Root mean square intensity", "5ZWQ"),
    ],
    Family.HISTOGRAM: [
        ("mean", "Mean discretised intensity", "X6K6"),
        ("var", "Discretised intensity variance", "CH89"),
        ("skew", "Discretised intensity skewness", "88K1"),
        ("kurt", "(Excess) discretised intensity kurtosis", "C3I7"),
        ("median", "Median discretised intensity", "WIFQ"),
        ("min", "Minimum discretised intensity", "1PR8"),
        ("p10", "10th discretised intensity percentile", "GPMT"),
        ("p90", "90th discretised intensity percentile", "OZ0C"),
        ("max", "Maximum discretised intensity", "3NCY"),
        ("mode", "Intensity histogram mode", "AMMC"),
        ("iqr", "Discretised intensity interquartile range", "WR0O"),
        ("range", "Discretised intensity range", "5Z3W"),
        ("mad", "Intensity histogram mean absolute deviation", "D2ZX"),
        ("rmad", "Intensity histogram robust mean absolute deviation", "WRZB"),
        ("medad", "Intensity histogram median absolute deviation", "4RNL"),
        ("cov", "Intensity histogram coefficient of variation", "CWYJ"),
        ("qcod", "Intensity histogram quartile coefficient of dispersion", "SLWD"),
        ("entropy", "Discretised intensity entropy", "TLU2"),
        ("uniformity", "Discretised intensity uniformity", "BJ5W"),
        ("max_grad", "Maximum histogram gradient", "12CE"),
        ("max_grad_g", "Maximum histogram gradient intensity", "8E6O"),
        ("min_grad", "Minimum histogram gradient", "VQB3"),
        ("min_grad_g", "Minimum histogram gradient intensity", "RHQZ"),
    ],
    Family.IVH: [
        ("v10", "Volume fraction at 10% intensity", "BC2M"),
        ("v90", "Volume fraction at 90% intensity", "BC2M"),
        ("i10", "Intensity at 10% volume", "GBPN"),
        ("i90", "Intensity at 90% volume", "GBPN"),
        ("diff_v10_v90", "Volume fraction difference between 10% and 90% intensity", "DDTU"),
        ("diff_i10_i90", "Intensity difference between 10% and 90% volume", "CNV2"),
    ],
    Family.GLCM: [
        ("joint_max", "Joint maximum", "GYBY"),
        ("joint_avg", "Joint average", "60VM"),
        ("joint_var", "Joint variance", "UR99"),
        ("joint_entr", "Joint entropy", "TU9B"),
        ("diff_avg", "Difference average", "TF7R"),
        ("diff_var", "Difference variance", "D3YU"),
        ("diff_entr", "Difference entropy", "NTRS"),
        ("sum_avg", "Sum average", "ZGXS"),
        ("sum_var", "Sum variance", "OEEB"),
        ("sum_entr", "Sum entropy", "P6QZ"),
        ("energy", "Angular second moment", "8ZQL"),
        ("contrast", "Contrast", "ACUI"),
        ("dissimilarity", "Dissimilarity", "8S9J"),
        ("inv_diff", "Inverse difference", "IB1Z"),
        ("inv_diff_norm", "Normalised inverse difference", "NDRX"),
        ("inv_diff_mom", "Inverse difference moment", "WF0Z"),
        ("inv_diff_mom_norm", "Normalised inverse difference moment", "1QCO"),
        ("inv_var", "Inverse variance", "E8JP"),
        ("corr", "Correlation", "NI2N"),
        ("auto_corr", "Autocorrelation", "QWB0"),
        ("clust_tend", "Cluster tendency", "DG8W"),
        ("clust_shade", "Cluster shade", "7NFM"),
        ("clust_prom", "Cluster prominence", "AE86"),
        ("info_corr1", "Information correlation 1", "R8DG"),
        ("info_corr2", "Information correlation 2", "JN9H"),
    ],
    Family.NGTDM: [
        ("coarseness", "Coarseness", "QCDE"),
        ("contrast", "Contrast", "65HE"),
        ("busyness", "Busyness", "NQ30"),
        ("complexity", "Complexity", "HDEZ"),
        ("strength", "Strength", "1X9X"),
    ],
}

#: Generic zone-like keys (see ``_texture.zone_like_features``) in IBSI order.
ZONE_KEYS = (
    "short", "long", "low", "high", "short_low", "short_high", "long_low", "long_high",
    "glnu", "glnu_norm", "jnu", "jnu_norm", "perc", "gl_var", "j_var", "entropy", "energy",
)  # fmt: skip

_ZONE_TABLES: dict[Family, list[tuple[str, str, str]]] = {
    Family.GLRLM: [
        ("sre", "Short runs emphasis", "22OV"),
        ("lre", "Long runs emphasis", "W4KF"),
        ("lgre", "Low grey level run emphasis", "V3SW"),
        ("hgre", "High grey level run emphasis", "G3QZ"),
        ("srlge", "Short run low grey level emphasis", "HTZT"),
        ("srhge", "Short run high grey level emphasis", "GD3A"),
        ("lrlge", "Long run low grey level emphasis", "IVPO"),
        ("lrhge", "Long run high grey level emphasis", "3KUM"),
        ("glnu", "Grey level non-uniformity", "R5YN"),
        ("glnu_norm", "Normalised grey level non-uniformity", "OVBL"),
        ("rlnu", "Run length non-uniformity", "W92Y"),
        ("rlnu_norm", "Normalised run length non-uniformity", "IC23"),
        ("r_perc", "Run percentage", "9ZK5"),
        ("gl_var", "Grey level variance", "8CE5"),
        ("rl_var", "Run length variance", "SXLW"),
        ("rl_entr", "Run entropy", "HJ9O"),
    ],
    Family.GLSZM: [
        ("sze", "Small zone emphasis", "5QRC"),
        ("lze", "Large zone emphasis", "48P8"),
        ("lgze", "Low grey level zone emphasis", "XMSY"),
        ("hgze", "High grey level zone emphasis", "5GN9"),
        ("szlge", "Small zone low grey level emphasis", "5RAI"),
        ("szhge", "Small zone high grey level emphasis", "HW1V"),
        ("lzlge", "Large zone low grey level emphasis", "YH51"),
        ("lzhge", "Large zone high grey level emphasis", "J17V"),
        ("glnu", "Grey level non-uniformity", "JNSA"),
        ("glnu_norm", "Normalised grey level non-uniformity", "Y1RO"),
        ("zsnu", "Zone size non-uniformity", "4JP3"),
        ("zsnu_norm", "Normalised zone size non-uniformity", "VB3A"),
        ("z_perc", "Zone percentage", "P30P"),
        ("gl_var", "Grey level variance", "BYLV"),
        ("zs_var", "Zone size variance", "3NSA"),
        ("zs_entr", "Zone size entropy", "GU8N"),
    ],
    Family.GLDZM: [
        ("sde", "Small distance emphasis", "0GBI"),
        ("lde", "Large distance emphasis", "MB4I"),
        ("lgze", "Low grey level zone emphasis", "S1RA"),
        ("hgze", "High grey level zone emphasis", "K26C"),
        ("sdlge", "Small distance low grey level emphasis", "RUVG"),
        ("sdhge", "Small distance high grey level emphasis", "DKNJ"),
        ("ldlge", "Large distance low grey level emphasis", "A7WM"),
        ("ldhge", "Large distance high grey level emphasis", "KLTH"),
        ("glnu", "Grey level non-uniformity", "VFT7"),
        ("glnu_norm", "Normalised grey level non-uniformity", "7HP3"),
        ("zdnu", "Zone distance non-uniformity", "V294"),
        ("zdnu_norm", "Normalised zone distance non-uniformity", "IATH"),
        ("z_perc", "Zone percentage", "VIWW"),
        ("gl_var", "Grey level variance", "QK93"),
        ("zd_var", "Zone distance variance", "7WT1"),
        ("zd_entr", "Zone distance entropy", "GBDU"),
    ],
    Family.NGLDM: [
        ("lde", "Low dependence emphasis", "SODN"),
        ("hde", "High dependence emphasis", "IMOQ"),
        ("lgce", "Low grey level count emphasis", "TL9H"),
        ("hgce", "High grey level count emphasis", "OAE7"),
        ("ldlge", "Low dependence low grey level emphasis", "EQ3F"),
        ("ldhge", "Low dependence high grey level emphasis", "JA6D"),
        ("hdlge", "High dependence low grey level emphasis", "NBZI"),
        ("hdhge", "High dependence high grey level emphasis", "9QMG"),
        ("glnu", "Grey level non-uniformity", "FP8K"),
        ("glnu_norm", "Normalised grey level non-uniformity", "5SPA"),
        ("dcnu", "Dependence count non-uniformity", "Z87G"),
        ("dcnu_norm", "Normalised dependence count non-uniformity", "OKJI"),
        ("dc_perc", "Dependence count percentage", "6XV8"),
        ("gl_var", "Grey level variance", "1PFV"),
        ("dc_var", "Dependence count variance", "DNX2"),
        ("dc_entr", "Dependence count entropy", "FCBV"),
        ("dc_energy", "Dependence count energy", "CAS9"),
    ],
}
_TABLES.update(_ZONE_TABLES)


def zone_names(family: Family) -> dict[str, str]:
    """Generic zone-like key → feature name of ``family`` (GLRLM, GLSZM, GLDZM, NGLDM)."""
    return {key: row[0] for key, row in zip(ZONE_KEYS, _ZONE_TABLES[family], strict=False)}


def family_aggregations(family: Family) -> tuple[Aggregation, ...]:
    """Aggregation methods that apply to ``family`` (empty for per-volume families)."""
    return TEXTURE_AGGREGATIONS.get(family, ())


def feature_catalogue(
    aggregations: tuple[Aggregation, ...] | None = None,
) -> dict[str, FeatureInfo]:
    """Every feature column medai can produce → its IBSI metadata.

    Args:
        aggregations: Restrict texture columns to these methods (default: all).

    Example:
        >>> feature_catalogue()["glcm_joint_max_3d_avg"].ibsi_code
        'GYBY'
    """
    wanted = set(aggregations) if aggregations is not None else set(Aggregation)
    out: dict[str, FeatureInfo] = {}
    for family, rows in _TABLES.items():
        aggs = family_aggregations(family)
        for key, ibsi_name, code in rows:
            base = f"{family.value}_{key}"
            if not aggs:
                out[base] = FeatureInfo(
                    base, family, _FAMILY_CODES[family], ibsi_name, code, "3d", _VOLUME_CODE
                )
                continue
            for agg in aggs:
                if agg in wanted:
                    name = f"{base}_{agg.value}"
                    out[name] = FeatureInfo(
                        name, family, _FAMILY_CODES[family], ibsi_name, code, agg.value,
                        AGGREGATION_CODES[agg],
                    )  # fmt: skip
    return out
