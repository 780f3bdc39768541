"""Facts the synthetic world reuses from real nuScenes: classes, categories, sizes, sensors.

Everything here is data, not behaviour. Category, attribute, sensor tokens and the sensor
calibration are the real nuScenes values (they are facts about the dataset); mean object sizes
[w, l, h] are the published nuScenes per-class statistics.
"""
import numpy as np

from occ import occ3d

# Occ3D-nuScenes class indices, in the order of occ.occ3d.CLASS_NAMES (the one class list: the
# synthetic GT is written with it; free is occ3d.FREE, the OpenOcc v2 order is in occ.openocc).
(OTHERS, BARRIER, BICYCLE, BUS, CAR, CONSTRUCTION, MOTORCYCLE, PEDESTRIAN, CONE, TRAILER, TRUCK,
 DRIVEABLE, OTHER_FLAT, SIDEWALK, TERRAIN, MANMADE, VEGETATION) = range(occ3d.FREE)

# nuScenes categories: (token, name, lidarseg index) as in the real category.json.
CATEGORIES = (
    ("41eeed6ce31e0276f2ba96d9e2c0f9de", "noise", 0),
    ("63a94dfa99bb47529567cd90d3b58384", "animal", 1),
    ("1fa93b757fc74fb197cdd60001ad8abf", "human.pedestrian.adult", 2),
    ("b1c6de4c57f14a5383d9f963fbdcb5cb", "human.pedestrian.child", 3),
    ("909f1237d34a49d6bdd27c2fe4581d79", "human.pedestrian.construction_worker", 4),
    ("403fede16c88426885dd73366f16c34a", "human.pedestrian.personal_mobility", 5),
    ("bb867e2064014279863c71a29b1eb381", "human.pedestrian.police_officer", 6),
    ("6a5888777ca14867a8aee3fe539b56c4", "human.pedestrian.stroller", 7),
    ("b2d7c6c701254928a9e4d6aac9446d79", "human.pedestrian.wheelchair", 8),
    ("653f7efbb9514ce7b81d44070d6208c1", "movable_object.barrier", 9),
    ("063c5e7f638343d3a7230bc3641caf97", "movable_object.debris", 10),
    ("d772e4bae20f493f98e15a76518b31d7", "movable_object.pushable_pullable", 11),
    ("85abebdccd4d46c7be428af5a6173947", "movable_object.trafficcone", 12),
    ("0a30519ee16a4619b4f4acfe2d78fb55", "static_object.bicycle_rack", 13),
    ("fc95c87b806f48f8a1faea2dcc2222a4", "vehicle.bicycle", 14),
    ("003edbfb9ca849ee8a7496e9af3025d4", "vehicle.bus.bendy", 15),
    ("fedb11688db84088883945752e480c2c", "vehicle.bus.rigid", 16),
    ("fd69059b62a3469fbaef25340c0eab7f", "vehicle.car", 17),
    ("5b3cd6f2bca64b83aa3d0008df87d0e4", "vehicle.construction", 18),
    ("732cce86872640628788ff1bb81006d4", "vehicle.emergency.ambulance", 19),
    ("7b2ff083a64e4d53809ae5d9be563504", "vehicle.emergency.police", 20),
    ("dfd26f200ade4d24b540184e16050022", "vehicle.motorcycle", 21),
    ("90d0f6f8e7c749149b1b6c3a029841a8", "vehicle.trailer", 22),
    ("6021b5187b924d64be64a702e5570edf", "vehicle.truck", 23),
    ("78b4c54b84990723bbf6b425e2e6e158", "flat.driveable_surface", 24),
    ("7e818b96ee207bb403de5fd99b5179bf", "flat.other", 25),
    ("2610e6ad0b68ec50e36d900c44402310", "flat.sidewalk", 26),
    ("6ca8de69a9d4b3aed344b6ee00c80800", "flat.terrain", 27),
    ("91856873b878aeef0b70c05385362a16", "static.manmade", 28),
    ("fc58b48dc16b026a4e74a1f9b7e12323", "static.other", 29),
    ("0bf477add08185fbc886892acc5fa52e", "static.vegetation", 30),
    ("0cd3e5fa8f86df928b31fa099037c385", "vehicle.ego", 31),
)
CATEGORY_TOKEN = {name: token for token, name, _ in CATEGORIES}
LIDARSEG_INDEX = {name: index for _, name, index in CATEGORIES}

# nuScenes category -> Occ3D class (the standard nuScenes-lidarseg 32 -> 16 mapping; ignored
# categories go to "others").
CATEGORY_TO_OCC3D = {
    "noise": OTHERS, "animal": OTHERS, "human.pedestrian.adult": PEDESTRIAN,
    "human.pedestrian.child": PEDESTRIAN, "human.pedestrian.construction_worker": PEDESTRIAN,
    "human.pedestrian.personal_mobility": OTHERS, "human.pedestrian.police_officer": PEDESTRIAN,
    "human.pedestrian.stroller": OTHERS, "human.pedestrian.wheelchair": OTHERS,
    "movable_object.barrier": BARRIER, "movable_object.debris": OTHERS,
    "movable_object.pushable_pullable": OTHERS, "movable_object.trafficcone": CONE,
    "static_object.bicycle_rack": OTHERS, "vehicle.bicycle": BICYCLE, "vehicle.bus.bendy": BUS,
    "vehicle.bus.rigid": BUS, "vehicle.car": CAR, "vehicle.construction": CONSTRUCTION,
    "vehicle.emergency.ambulance": OTHERS, "vehicle.emergency.police": OTHERS,
    "vehicle.motorcycle": MOTORCYCLE, "vehicle.trailer": TRAILER, "vehicle.truck": TRUCK,
    "flat.driveable_surface": DRIVEABLE, "flat.other": OTHER_FLAT, "flat.sidewalk": SIDEWALK,
    "flat.terrain": TERRAIN, "static.manmade": MANMADE, "static.other": OTHERS,
    "static.vegetation": VEGETATION, "vehicle.ego": OTHERS,
}
# lidarseg index (0..31) -> Occ3D class, for reading the per-point labels back.
LIDARSEG_TO_OCC3D = np.array([CATEGORY_TO_OCC3D[name] for _, name, _ in CATEGORIES], dtype=np.uint8)
# Occ3D class of background surfaces -> the category their LiDAR points are labelled with.
STUFF_CATEGORY = {
    DRIVEABLE: "flat.driveable_surface", OTHER_FLAT: "flat.other", SIDEWALK: "flat.sidewalk",
    TERRAIN: "flat.terrain", MANMADE: "static.manmade", VEGETATION: "static.vegetation",
}

ATTRIBUTES = (
    ("cb5118da1ab342aa947717dc53544259", "vehicle.moving", "Vehicle is moving."),
    ("c3246a1e22a14fcb878aa61e69ae3329", "vehicle.stopped",
     "Vehicle, with a driver/rider in/on it, is currently stationary but has an intent to move."),
    ("58aa28b1c2a54dc88e169808c07331e3", "vehicle.parked",
     "Vehicle is stationary (usually for longer duration) with no immediate intent to move."),
    ("a14936d865eb4216b396adae8cb3939c", "cycle.with_rider", "There is a rider on the bicycle or motorcycle."),
    ("5a655f9751944309a277276b8f473452", "cycle.without_rider", "There is NO rider on the bicycle or motorcycle."),
    ("03aa62109bf043afafdea7d875dd4f43", "pedestrian.sitting_lying_down", "The human is sitting or lying down."),
    ("4d8821270b4a47e3a8a300cbec48188e", "pedestrian.standing", "The human is standing."),
    ("ab83627ff28b465b85c427162dec722f", "pedestrian.moving", "The human is moving."),
)
ATTRIBUTE_TOKEN = {name: token for token, name, _ in ATTRIBUTES}

VISIBILITY = (  # (token, level, description); token = bin of the visible fraction
    ("1", "v0-40", "visibility of whole object is between 0 and 40%"),
    ("2", "v40-60", "visibility of whole object is between 40 and 60%"),
    ("3", "v60-80", "visibility of whole object is between 60 and 80%"),
    ("4", "v80-100", "visibility of whole object is between 80 and 100%"),
)

# Mean box size [w, l, h] in metres per category (nuScenes training-set statistics).
MEAN_SIZE = {
    "vehicle.car": (1.95, 4.62, 1.73), "vehicle.truck": (2.51, 6.93, 2.84),
    "vehicle.bus.rigid": (2.94, 10.5, 3.47), "vehicle.trailer": (2.90, 12.29, 3.87),
    "vehicle.construction": (2.73, 6.37, 3.19), "human.pedestrian.adult": (0.67, 0.73, 1.77),
    "vehicle.motorcycle": (0.77, 2.11, 1.47), "vehicle.bicycle": (0.60, 1.70, 1.28),
    "movable_object.trafficcone": (0.41, 0.41, 1.07), "movable_object.barrier": (2.49, 0.48, 0.98),
    "movable_object.pushable_pullable": (0.62, 0.72, 1.06), "movable_object.debris": (0.90, 1.10, 0.45),
    "animal": (0.35, 0.80, 0.60),
}

# Sensors: (sensor token, channel, modality), the real nuScenes sensor.json rows.
SENSORS = (
    ("725903f5b62f56118f4094b46a4470d8", "CAM_FRONT", "camera"),
    ("2f7ad058f1ac5557bf321c7543758f43", "CAM_FRONT_RIGHT", "camera"),
    ("ca7dba2ec9f95951bbe67246f7f2c3f7", "CAM_BACK_RIGHT", "camera"),
    ("ce89d4f3050b5892b33b3d328c5e82a3", "CAM_BACK", "camera"),
    ("a89643a5de885c6486df2232dc954da2", "CAM_BACK_LEFT", "camera"),
    ("ec4b5d41840a509984f7ec36419d4c09", "CAM_FRONT_LEFT", "camera"),
    ("dc8b396651c05aedbb9cdaae573bb567", "LIDAR_TOP", "lidar"),
)
CAMERAS = tuple(channel for _, channel, modality in SENSORS if modality == "camera")

# Real nuScenes mountings (scene-0061, log n015): translation (m), rotation (w, x, y, z) sensor->ego,
# camera intrinsics for 1600x900 images.
CALIBRATION = {
    "CAM_FRONT": ([1.70079118954, 0.0159456324149, 1.51095763913],
                  [0.4998015430569128, -0.5030316162024876, 0.4997798114386805, -0.49737083824542755],
                  [[1266.417203046554, 0.0, 816.2670197447984], [0.0, 1266.417203046554, 491.50706579294757],
                   [0.0, 0.0, 1.0]]),
    "CAM_FRONT_RIGHT": ([1.5508477543, -0.493404796419, 1.49574800619],
                        [0.2060347966337182, -0.2026940577919598, 0.6824507824531167, -0.6713610884174485],
                        [[1260.8474446004698, 0.0, 807.968244525554], [0.0, 1260.8474446004698, 495.3344268742088],
                         [0.0, 0.0, 1.0]]),
    "CAM_BACK_RIGHT": ([1.0148780988, -0.480568219723, 1.56239545128],
                       [0.12280980120078765, -0.132400842670559, -0.7004305821388234, 0.690496031265798],
                       [[1259.5137405846733, 0.0, 807.2529053838625], [0.0, 1259.5137405846733, 501.19579884916527],
                        [0.0, 0.0, 1.0]]),
    "CAM_BACK": ([0.0283260309358, 0.00345136761476, 1.57910346144],
                 [0.5037872666382278, -0.49740249788611096, -0.4941850223835201, 0.5045496097725578],
                 [[809.2209905677063, 0.0, 829.2196003259838], [0.0, 809.2209905677063, 481.77842384512485],
                  [0.0, 0.0, 1.0]]),
    "CAM_BACK_LEFT": ([1.03569100218, 0.484795032713, 1.59097014818],
                      [0.6924185592174665, -0.7031619420114925, -0.11648342771943819, 0.11203317912370753],
                      [[1256.7414812095406, 0.0, 792.1125740759628], [0.0, 1256.7414812095406, 492.7757465151356],
                       [0.0, 0.0, 1.0]]),
    "CAM_FRONT_LEFT": ([1.52387798135, 0.494631336551, 1.50932822144],
                       [0.6757265034669446, -0.6736266522251881, 0.21214015046209478, -0.21122827103904068],
                       [[1272.5979470598488, 0.0, 826.6154927353808], [0.0, 1272.5979470598488, 479.75165386361925],
                        [0.0, 0.0, 1.0]]),
    "LIDAR_TOP": ([0.943713, 0.0, 1.84023],
                  [0.7077955119163518, -0.006492242056004365, 0.010646214713995808, -0.7063073142877817],
                  []),
}
SOURCE_IMAGE_SIZE = (1600, 900)
# Camera exposure time relative to the LiDAR key frame (microseconds), as in a real nuScenes sample.
CAMERA_TIME_OFFSET_US = {
    "CAM_FRONT": -35491, "CAM_FRONT_RIGHT": -27612, "CAM_BACK_RIGHT": -20058, "CAM_BACK": -10426,
    "CAM_BACK_LEFT": -528, "CAM_FRONT_LEFT": -43107,
}

# HDL-32E as mounted on the nuScenes car.
LIDAR_ELEVATIONS_DEG = np.linspace(-30.67, 10.67, 32)
LIDAR_AZIMUTH_STEPS = 1084
LIDAR_MAX_RANGE = 70.0
KEYFRAME_INTERVAL_US = 500000  # 2 Hz samples
SWEEP_INTERVAL_US = 50000  # 20 Hz LiDAR

# The ten v1.0-mini scene names, so nuScenes' mini_train / mini_val splits apply.
MINI_SCENES = ("scene-0061", "scene-0103", "scene-0553", "scene-0655", "scene-0757", "scene-0796",
               "scene-0916", "scene-1077", "scene-1094", "scene-1100")
LOCATIONS = ("singapore-onenorth", "boston-seaport", "singapore-queenstown", "singapore-hollandvillage")
