"""The procedural driving world of one scene: road layout, static stuff, agents and their motion.

Layout (in a "road frame": u along the main road, v to its left; the road frame is placed in the
global frame by a random origin and heading):
  - a straight main road: an optional median (other_flat), 1-3 travel lanes per direction
    (3.5 m, lane markings), optional parking lanes (driveable), sidewalks with a kerb-side
    furniture strip (poles, signs, trees, bins, parked bicycles), a terrain band, then buildings
    (manmade) set back in lots, separated by cross streets (driveable) and some plazas (other_flat);
  - the ego drives along one lane at constant speed (0 when waiting);
  - traffic: every lane has one speed, so vehicles never overlap; the outermost lane is slow
    (bicycles, motorcycles, cars, trucks); inner lanes carry cars, trucks, buses, truck+trailer,
    motorcycles; the opposite direction mirrors it; pedestrians walk in sidewalk slots (one speed
    per slot) or stand; a construction zone (barriers, cones, a construction vehicle) and parked
    vehicles fill parking lanes; "others" are bins, debris and animals.
Every object is a yaw-only box (the nuScenes annotation) made of one or more "parts", which are
also yaw-only boxes (car body + cabin + wheels, tree trunk + crowns, pedestrian legs + torso +
head...). Parts are what sensors see and what the ground truth voxelises; the ground is the plane
z = 0 with a class per (x, y). Every motion is at constant velocity, so the devkit's
`box_velocity` (finite differences of annotations) equals the true velocity.
"""
import colorsys
import math
from dataclasses import dataclass

import numpy as np

from datasets.synthetic import catalog as C

# Part textures (interpreted by the camera renderer).
PLAIN, WINDOWS, GLASS, STRIPES, TYRE, LEAVES, BARK, CLOTH = range(8)


@dataclass
class Parts:
    """Boxes at one instant, global frame. P parts."""
    centre: np.ndarray  # (P, 3)
    half: np.ndarray  # (P, 3) half extents along the part's x (heading), y, z
    yaw: np.ndarray  # (P,)
    cls: np.ndarray  # (P,) Occ3D class
    instance: np.ndarray  # (P,) object index, the same for all parts of one object
    colour: np.ndarray  # (P, 3) RGB in [0, 1]
    texture: np.ndarray  # (P,) texture id
    reflectivity: np.ndarray  # (P,) LiDAR reflectivity in [0, 1]

    def select(self, keep):
        return Parts(*(getattr(self, name)[keep] for name in self.__dataclass_fields__))


class World:
    """One scene. Built from a numpy Generator; `duration` seconds of motion are populated."""

    def __init__(self, rng, duration):
        self.rng = rng
        self.origin = np.array([rng.uniform(300, 2000), rng.uniform(300, 2000)])
        self.heading = rng.uniform(-math.pi, math.pi)
        lanes = int(rng.integers(1, 4))
        self.lanes = lanes
        self.median = float(rng.choice([0.0, 0.0, 1.5, 2.5]))
        self.parking = float(rng.choice([0.0, 2.5]))
        self.half_road = self.median / 2 + 3.5 * lanes + self.parking
        self.sidewalk = float(rng.uniform(3.0, 5.0))
        self.terrain = float(rng.uniform(2.0, 8.0))
        self.ego_lane = int(rng.integers(0, lanes))
        self.lane_speed = self._lane_speeds()
        self.ego_speed = self.lane_speed[self.ego_lane]
        self.ego_v = -self._lane_centre(self.ego_lane)
        self.u_lo, self.u_hi = -160.0, self.ego_speed * duration + 160.0
        self.cross_u = self._cross_streets()
        self.cross_half = float(rng.uniform(5.0, 8.0))
        self.plazas = []  # (u0, u1, v0, v1) rectangles of other_flat beyond the sidewalks
        self._objects = []  # dicts, see _add
        self._build()
        self._finalise()

    # ----- road frame helpers -----
    def _lane_centre(self, lane):
        """|v| of the centre of travel lane `lane` (0 = innermost)."""
        return self.median / 2 + 3.5 * (lane + 0.5)

    def _lane_speeds(self):
        speeds = self.rng.uniform(6.0, 13.0, self.lanes)
        speeds[-1] = self.rng.uniform(3.0, 6.0)  # the slow outer lane
        if self.rng.uniform() < 0.2:  # waiting at a light: the ego's lane stands still
            speeds[self.ego_lane] = 0.0
        return speeds

    def _cross_streets(self):
        positions, u = [], self.u_lo + self.rng.uniform(20, 60)
        while u < self.u_hi:
            if abs(u) > 30:  # keep the start clear so the guaranteed objects fit
                positions.append(u)
            u += self.rng.uniform(70, 130)
        return np.array(positions)

    def road_to_global(self, uv):
        c, s = math.cos(self.heading), math.sin(self.heading)
        uv = np.asarray(uv, dtype=np.float64)
        return np.stack([uv[..., 0] * c - uv[..., 1] * s, uv[..., 0] * s + uv[..., 1] * c], -1) + self.origin

    def global_to_road(self, xy):
        c, s = math.cos(self.heading), math.sin(self.heading)
        d = np.asarray(xy, dtype=np.float64) - self.origin
        return np.stack([d[..., 0] * c + d[..., 1] * s, -d[..., 0] * s + d[..., 1] * c], -1)

    def ground_class(self, xy):
        """Occ3D class of the ground at global (..., 2) points."""
        uv = self.global_to_road(xy)
        u, av = uv[..., 0], np.abs(uv[..., 1])
        cls = np.full(u.shape, C.TERRAIN, dtype=np.uint8)
        cls[av < self.half_road + self.sidewalk] = C.SIDEWALK
        for u0, u1, v0, v1 in self.plazas:
            cls[(u >= u0) & (u < u1) & (av >= v0) & (av < v1)] = C.OTHER_FLAT
        if len(self.cross_u):
            du = np.min(np.abs(u[..., None] - self.cross_u), axis=-1)
            cls[(du < self.cross_half + self.sidewalk) & (av >= self.half_road)] = C.SIDEWALK
            cls[(du < self.cross_half) & (av >= self.half_road)] = C.DRIVEABLE
        cls[av < self.half_road] = C.DRIVEABLE
        cls[av < self.median / 2] = C.OTHER_FLAT
        return cls

    def lane_marking(self, xy):
        """True where global (..., 2) points lie on a painted lane line (camera texture only)."""
        uv = self.global_to_road(xy)
        u, av = uv[..., 0], np.abs(uv[..., 1])
        marks = np.zeros(u.shape, dtype=bool)
        for k in range(1, self.lanes):
            boundary = self.median / 2 + 3.5 * k
            marks |= (np.abs(av - boundary) < 0.08) & (np.mod(u, 9.0) < 3.0)
        marks |= np.abs(av - (self.median / 2 + 3.5 * self.lanes)) < 0.08  # edge line
        if self.median == 0:
            marks |= av < 0.1
        if len(self.cross_u):
            marks &= np.min(np.abs(u[..., None] - self.cross_u), axis=-1) > self.cross_half
        return marks

    def ego_pose(self, t):
        """Global (x, y) and yaw of the ego at time t (s)."""
        xy = self.road_to_global([self.ego_speed * t, self.ego_v])
        return xy, self.heading

    # ----- objects -----
    def _add(self, category, cls, u, v, yaw_road, size, speed=0.0, attribute="", parts=None, z0=0.0):
        """One object: box of `size` (w, l, h) standing on z0 at road (u, v), moving along its heading."""
        w, l, h = size
        self._objects.append(dict(
            category=category, cls=cls, uv=(u, v), yaw_road=yaw_road, size=(w, l, h), speed=speed,
            attribute=attribute, z0=z0, parts=parts if parts is not None else [((0, 0, 0), (l / 2, w / 2, h / 2), PLAIN)],
        ))

    def _colour(self, hue=None, sat=None, val=None):
        rng = self.rng
        hue = rng.uniform() if hue is None else hue + rng.normal(0, 0.03)
        sat = rng.uniform(0.1, 0.8) if sat is None else sat
        val = rng.uniform(0.25, 0.95) if val is None else val
        return np.array(colorsys.hsv_to_rgb(hue % 1.0, np.clip(sat, 0, 1), np.clip(val, 0, 1)))

    def _jitter(self, category):
        w, l, h = C.MEAN_SIZE[category]
        f = np.clip(self.rng.normal(1.0, 0.08, 3), 0.8, 1.25)
        return (w * f[0], l * f[1], h * f[2])

    def _vehicle_parts(self, category, size):
        """Parts of a road vehicle; offsets relative to the box centre, (half l, half w, half h)."""
        w, l, h = size
        lo = -h / 2
        body = self._colour()
        parts = [((0, 0, lo + 0.14 * h), (l * 0.36, w / 2, 0.14 * h), TYRE)]  # axles and tyres
        if category == "vehicle.car":
            parts += [((0, 0, lo + 0.42 * h), (l / 2, w / 2, 0.14 * h), PLAIN, body),
                      ((-0.05 * l, 0, lo + 0.78 * h), (0.28 * l, 0.45 * w, 0.22 * h), GLASS, body)]
        elif category in ("vehicle.truck", "vehicle.construction"):
            cab = self._colour()
            parts += [((0.37 * l, 0, lo + 0.6 * h), (0.13 * l, w / 2, 0.32 * h), GLASS, cab),
                      ((-0.12 * l, 0, lo + 0.62 * h), (0.38 * l, w / 2, 0.38 * h),
                       STRIPES if category == "vehicle.construction" else PLAIN, body)]
            if category == "vehicle.construction":  # the arm
                parts.append(((-0.05 * l, 0, lo + 0.9 * h), (0.3 * l, 0.12 * w, 0.1 * h), PLAIN, cab))
        elif category == "vehicle.bus.rigid":
            parts += [((0, 0, lo + 0.45 * h), (l / 2, w / 2, 0.2 * h), PLAIN, body),
                      ((0, 0, lo + 0.8 * h), (l / 2, w / 2, 0.2 * h), WINDOWS, body)]
        elif category == "vehicle.trailer":
            parts = [((-0.3 * l, 0, lo + 0.12 * h), (l * 0.15, w / 2, 0.12 * h), TYRE),
                     ((0, 0, lo + 0.62 * h), (l / 2, w / 2, 0.38 * h), STRIPES, body)]
        return [p if len(p) == 4 else p + (np.array([0.08, 0.08, 0.08]),) for p in parts]

    def _cycle_parts(self, size, rider):
        w, l, h = size
        lo = -h / 2
        frame = self._colour()
        parts = [((0, 0, lo + 0.22 * h), (l / 2, 0.12 * w, 0.22 * h), TYRE, np.array([0.06, 0.06, 0.06])),
                 ((0, 0, lo + 0.5 * h), (0.35 * l, 0.25 * w, 0.08 * h), PLAIN, frame)]
        if rider:
            parts.append(((-0.1 * l, 0, lo + 0.8 * h), (0.15 * l, 0.5 * w, 0.2 * h), CLOTH, self._colour()))
        return parts

    def _pedestrian_parts(self, size):
        w, l, h = size
        lo = -h / 2
        skin = self._colour(hue=0.07, sat=self.rng.uniform(0.2, 0.6), val=self.rng.uniform(0.3, 0.9))
        return [((0, 0, lo + 0.24 * h), (0.25 * l, 0.3 * w, 0.24 * h), CLOTH, self._colour()),
                ((0, 0, lo + 0.66 * h), (0.35 * l, 0.5 * w, 0.18 * h), CLOTH, self._colour()),
                ((0, 0, lo + 0.92 * h), (0.2 * l, 0.2 * w, 0.08 * h), PLAIN, skin)]

    def _add_vehicle(self, category, u, v, yaw_road, speed, attribute):
        size = self._jitter(category)
        self._add(category, _occ_class(category), u, v, yaw_road, size, speed, attribute,
                  self._vehicle_parts(category, size))
        return size

    def _add_simple(self, category, u, v, yaw_road, texture, colour, speed=0.0, attribute=""):
        w, l, h = size = self._jitter(category)
        self._add(category, _occ_class(category), u, v, yaw_road, size, speed, attribute,
                  [((0, 0, 0), (l / 2, w / 2, h / 2), texture, colour)])

    def _traffic(self):
        """Vehicles in every travel lane; both directions; one speed per lane."""
        rng = self.rng
        for direction in (1, -1):
            for lane in range(self.lanes):
                speed = self.lane_speed[lane] if direction == 1 else rng.uniform(3.0, 13.0)
                v = -direction * self._lane_centre(lane)
                slow = lane == self.lanes - 1
                choices = (["vehicle.car", "vehicle.bicycle", "vehicle.motorcycle", "vehicle.truck"] if slow else
                           ["vehicle.car"] * 4 + ["vehicle.truck", "vehicle.bus.rigid", "vehicle.motorcycle", "trailer"])
                u = self.u_lo - speed * 20 + rng.uniform(0, 20)
                while u < self.u_hi + 10:
                    category = str(rng.choice(choices))
                    attribute = "vehicle.moving" if speed > 0 else "vehicle.stopped"
                    yaw = 0.0 if direction == 1 else math.pi
                    ego_clear = direction == 1 and lane == self.ego_lane
                    if category == "trailer":  # truck pulling a trailer, same speed
                        tw, tl, th = self._jitter("vehicle.trailer")
                        trail_u = u + tl / 2
                        size = self._jitter("vehicle.truck")
                        truck_u = trail_u + direction * (tl / 2 + size[1] / 2 + 0.6)
                        if not ego_clear or (abs(trail_u) > 25 + tl and abs(truck_u) > 25):
                            self._add("vehicle.trailer", C.TRAILER, trail_u, v, yaw, (tw, tl, th), speed, attribute,
                                      self._vehicle_parts("vehicle.trailer", (tw, tl, th)))
                            self._add("vehicle.truck", C.TRUCK, truck_u, v, yaw, size, speed, attribute,
                                      self._vehicle_parts("vehicle.truck", size))
                        u += tl + size[1] + rng.uniform(5, 30)
                        continue
                    length = C.MEAN_SIZE[category][1]
                    centre = u + length / 2
                    if not ego_clear or abs(centre) > 10 + length:
                        if category in ("vehicle.bicycle", "vehicle.motorcycle"):
                            size = self._jitter(category)
                            self._add(category, _occ_class(category), centre, v, yaw, size, speed,
                                      "cycle.with_rider", self._cycle_parts(size, rider=True))
                        else:
                            self._add_vehicle(category, centre, v, yaw, speed, attribute)
                    u += length + rng.uniform(4, 25)

    def _kerbside(self, side):
        """Parked vehicles in the parking lane, furniture strip, pedestrians, terrain, buildings."""
        rng = self.rng
        kerb = self.half_road
        if self.parking:
            u = self.u_lo
            while u < self.u_hi:
                category = str(rng.choice(["vehicle.car"] * 5 + ["vehicle.truck", "vehicle.bus.rigid", "empty"]))
                if category == "empty":
                    u += rng.uniform(5, 25)
                    continue
                length = C.MEAN_SIZE[category][1]
                if not (side == -1 and -20 < u + length / 2 < 35):  # leave room for the construction zone
                    yaw = 0.0 if rng.uniform() < 0.8 else math.pi
                    self._add_vehicle(category, u + length / 2, side * (kerb - 1.25), yaw, 0.0, "vehicle.parked")
                u += length + rng.uniform(1.0, 12.0)
        # Furniture strip: poles with signs, trees, bins, parked bicycles / motorcycles.
        strip = side * (kerb + 0.5)
        u = self.u_lo
        while u < self.u_hi:
            kind = rng.choice(["pole", "tree", "tree", "bin", "bicycle", "motorcycle", "none"])
            if kind == "pole":
                self._add_pole(u, strip)
            elif kind == "tree":
                self._add_tree(u, strip)
            elif kind == "bin":
                self._add_simple("movable_object.pushable_pullable", u, strip, rng.uniform(-0.3, 0.3), PLAIN,
                                 self._colour(hue=rng.choice([0.3, 0.6, 0.0]), sat=0.6, val=0.4))
            elif kind in ("bicycle", "motorcycle"):
                category = "vehicle." + kind
                size = self._jitter(category)
                self._add(category, _occ_class(category), u, strip, side * math.pi / 2 + rng.normal(0, 0.1), size,
                          0.0, "cycle.without_rider", self._cycle_parts(size, rider=False))
            u += rng.uniform(5.0, 16.0)
        # Pedestrians: sidewalk slots, one speed per slot.
        slot_v = kerb + 1.4
        while slot_v < kerb + self.sidewalk - 0.4:
            speed = rng.choice([0.0, rng.uniform(0.8, 1.7)])
            direction = rng.choice([1, -1])
            u = self.u_lo - 20 + rng.uniform(0, 30)
            while u < self.u_hi + 20:
                size = self._jitter("human.pedestrian.adult")
                attribute = "pedestrian.moving" if speed > 0 else "pedestrian.standing"
                yaw = (0.0 if direction == 1 else math.pi) if speed > 0 else rng.uniform(-math.pi, math.pi)
                category = str(rng.choice(["human.pedestrian.adult"] * 6 + ["human.pedestrian.child",
                                                                            "human.pedestrian.construction_worker"]))
                if category == "human.pedestrian.child":
                    size = (size[0] * 0.75, size[1] * 0.75, size[2] * 0.7)
                self._add(category, C.PEDESTRIAN, u, side * slot_v, yaw, size, speed, attribute,
                          self._pedestrian_parts(size))
                u += rng.uniform(6, 45)
            slot_v += 1.1
        # Terrain band: bushes, trees, the odd animal.
        band_lo = kerb + self.sidewalk
        u = self.u_lo
        while u < self.u_hi:
            v = side * (band_lo + rng.uniform(0.8, max(1.0, self.terrain - 0.8)))
            kind = rng.choice(["bush", "tree", "none", "animal"], p=[0.45, 0.3, 0.2, 0.05])
            if kind == "bush":
                w, l, h = rng.uniform(0.8, 2.5), rng.uniform(0.8, 3.0), rng.uniform(0.4, 1.4)
                self._add("", C.VEGETATION, u, v, rng.uniform(-0.3, 0.3), (w, l, h), parts=[
                    ((0, 0, 0), (l / 2, w / 2, h / 2), LEAVES, self._colour(hue=0.3, sat=0.6, val=rng.uniform(0.2, 0.5)))])
            elif kind == "tree":
                self._add_tree(u, v)
            elif kind == "animal":
                self._add_simple("animal", u, v, rng.uniform(-math.pi, math.pi), CLOTH,
                                 self._colour(hue=0.08, sat=0.5, val=0.4))
            u += rng.uniform(3.0, 10.0)
        self._buildings(side, band_lo + self.terrain)

    def _add_pole(self, u, v):
        rng = self.rng
        h = rng.uniform(4.5, 8.0)
        grey = self._colour(hue=0.6, sat=0.05, val=rng.uniform(0.3, 0.6))
        parts = [((0, 0, 0), (0.1, 0.1, h / 2), PLAIN, grey)]
        if rng.uniform() < 0.6:  # a sign board
            parts.append(((0, 0, -h / 2 + 2.6), (0.04, 0.35, 0.35), STRIPES,
                          self._colour(hue=rng.choice([0.0, 0.6, 0.15]), sat=0.8, val=0.8)))
        self._add("", C.MANMADE, u, v, 0.0, (0.7, 0.2, h), parts=parts)

    def _add_tree(self, u, v):
        rng = self.rng
        trunk_h = rng.uniform(1.8, 3.0)
        crown = rng.uniform(2.0, 5.0)
        crown_h = rng.uniform(2.0, 4.0)
        h = trunk_h + crown_h
        green = self._colour(hue=rng.uniform(0.22, 0.36), sat=rng.uniform(0.4, 0.8), val=rng.uniform(0.2, 0.5))
        bark = self._colour(hue=0.08, sat=0.5, val=0.25)
        parts = [((0, 0, -h / 2 + trunk_h / 2), (0.15, 0.15, trunk_h / 2), BARK, bark),
                 ((0, 0, -h / 2 + trunk_h + crown_h / 2), (crown / 2, crown / 2, crown_h / 2), LEAVES, green),
                 ((0, 0, -h / 2 + trunk_h + crown_h * 0.55), (crown * 0.35, crown * 0.65, crown_h * 0.4), LEAVES,
                  green * 0.85)]
        self._add("", C.VEGETATION, u, v, rng.uniform(0, math.pi / 2), (crown * 1.3, crown * 1.3, h), parts=parts)

    def _buildings(self, side, v_lo):
        rng = self.rng
        edges = np.concatenate([[self.u_lo], self.cross_u, [self.u_hi]])
        for a, b in zip(edges[:-1], edges[1:]):
            u = a + self.cross_half + self.sidewalk + 1.0
            end = b - self.cross_half - self.sidewalk - 1.0
            while u < end - 4:
                length = min(rng.uniform(8, 35), end - u)
                if rng.uniform() < 0.15:  # a plaza
                    self.plazas.append((u, u + length, v_lo, v_lo + 25))
                else:
                    depth, height = rng.uniform(8, 25), rng.uniform(4, 22)
                    setback = rng.uniform(0, 4)
                    wall = self._colour(hue=rng.choice([0.08, 0.1, 0.0, 0.6]), sat=rng.uniform(0.05, 0.4),
                                        val=rng.uniform(0.4, 0.85))
                    self._add("", C.MANMADE, u + length / 2, side * (v_lo + setback + depth / 2), 0.0,
                              (depth, length, height), parts=[((0, 0, 0), (length / 2, depth / 2, height / 2), WINDOWS, wall)])
                u += length + rng.uniform(0.5, 6)

    def _guaranteed(self):
        """Objects near the ego's start so every class appears in the first frames of every scene."""
        rng = self.rng
        side = -1.0 if self.parking else 1.0
        v = side * (self.half_road - 1.25) if self.parking else side * (self.half_road + 0.5)
        u = rng.uniform(-15, -5)
        # A construction zone: barriers, cones, a construction vehicle.
        for k in range(int(rng.integers(3, 6))):
            self._add_simple("movable_object.barrier", u + 2.7 * k, v, math.pi / 2 + rng.normal(0, 0.05), STRIPES,
                             self._colour(hue=rng.choice([0.0, 0.08, 0.6]), sat=0.7, val=0.85))
        u += 2.7 * 6
        for k in range(int(rng.integers(3, 7))):
            self._add_simple("movable_object.trafficcone", u + 1.6 * k, v + rng.normal(0, 0.2), 0.0, STRIPES,
                             self._colour(hue=0.06, sat=0.9, val=0.95))
        if self.parking:
            self._add_vehicle("vehicle.construction", u + 16, v, 0.0, 0.0, "vehicle.parked")
            self._add_simple("movable_object.debris", u - 3, v, rng.uniform(0, math.pi), PLAIN,
                             self._colour(hue=0.1, sat=0.4, val=0.3))
        else:  # no parking lane: the zone sits on the far side of the sidewalk
            self._add_vehicle("vehicle.construction", u + 16, side * (self.half_road + self.sidewalk + 2.0), 0.0,
                              0.0, "vehicle.parked")
        # The other kerb: a parked truck with its trailer and a bus stop.
        far = -side * (self.half_road + self.sidewalk + max(self.terrain / 2, 1.8))
        self._add_vehicle("vehicle.truck", rng.uniform(-30, -22), far, 0.0, 0.0, "vehicle.parked")
        tw, tl, th = self._jitter("vehicle.trailer")
        self._add("vehicle.trailer", C.TRAILER, rng.uniform(12, 18) + tl / 2, far, 0.0, (tw, tl, th), 0.0,
                  "vehicle.parked", self._vehicle_parts("vehicle.trailer", (tw, tl, th)))
        self._add_vehicle("vehicle.bus.rigid", rng.uniform(-15, -5), far, math.pi, 0.0, "vehicle.parked")

    def _build(self):
        self._guaranteed()
        self._traffic()
        for side in (1, -1):
            self._kerbside(side)
        self._drop_overlaps()

    def _drop_overlaps(self):
        """Remove objects whose footprint overlaps an earlier object at t = 0 (static placements)."""
        kept = []
        boxes = []  # (u, v, half_u, half_v) axis-aligned footprints (road frame) of static objects kept
        for obj in self._objects:
            if obj["speed"] > 0:
                kept.append(obj)
                continue
            w, l, _ = obj["size"]
            c, s = abs(math.cos(obj["yaw_road"])), abs(math.sin(obj["yaw_road"]))
            foot = (obj["uv"][0], obj["uv"][1], (l * c + w * s) / 2 + 0.1, (l * s + w * c) / 2 + 0.1)
            if any(abs(foot[0] - b[0]) < foot[2] + b[2] and abs(foot[1] - b[1]) < foot[3] + b[3] for b in boxes):
                continue
            boxes.append(foot)
            kept.append(obj)
        self._objects = kept

    def _finalise(self):
        """Flatten objects and parts into arrays (global frame at t = 0)."""
        objs = self._objects
        uv = np.array([o["uv"] for o in objs])
        self.obj_category = [o["category"] for o in objs]
        self.obj_attribute = [o["attribute"] for o in objs]
        self.obj_cls = np.array([o["cls"] for o in objs], dtype=np.uint8)
        self.obj_size = np.array([o["size"] for o in objs])  # (O, 3) w, l, h
        self.obj_yaw = np.array([o["yaw_road"] for o in objs]) + self.heading
        xy = self.road_to_global(uv)
        self.obj_centre0 = np.concatenate([xy, (np.array([o["z0"] for o in objs]) + self.obj_size[:, 2] / 2)[:, None]], 1)
        speed = np.array([o["speed"] for o in objs])
        self.obj_velocity = np.stack([speed * np.cos(self.obj_yaw), speed * np.sin(self.obj_yaw),
                                      np.zeros_like(speed)], 1)  # (O, 3) global m/s
        self.obj_annotated = np.array([bool(o["category"]) for o in objs])
        self.obj_lidarseg = np.array([C.LIDARSEG_INDEX.get(o["category"], 0) for o in objs], dtype=np.uint8)
        part_obj, offset, half, texture, colour = [], [], [], [], []
        for i, o in enumerate(objs):
            for part in o["parts"]:
                part_obj.append(i)
                offset.append(part[0])
                half.append(part[1])
                texture.append(part[2])
                colour.append(part[3] if len(part) > 3 else self._colour())
        self.part_obj = np.array(part_obj)
        self.part_offset = np.array(offset, dtype=np.float64)
        self.part_half = np.array(half, dtype=np.float64)
        self.part_texture = np.array(texture, dtype=np.int64)
        self.part_colour = np.clip(np.array(colour), 0, 1)
        reflectivity = {PLAIN: 0.35, WINDOWS: 0.3, GLASS: 0.15, STRIPES: 0.8, TYRE: 0.05, LEAVES: 0.25,
                        BARK: 0.2, CLOTH: 0.3}
        self.part_reflectivity = np.array([reflectivity[t] for t in texture]) * (0.7 + 0.6 * self.part_colour.mean(1))

    def parts_at(self, t, near=None, radius=None):
        """Parts at time t (s), optionally only those within `radius` m (xy) of global point `near`."""
        centre = self.obj_centre0 + self.obj_velocity * t  # (O, 3)
        obj = self.part_obj
        yaw = self.obj_yaw[obj]
        c, s = np.cos(yaw), np.sin(yaw)
        off = self.part_offset
        part_centre = centre[obj] + np.stack([c * off[:, 0] - s * off[:, 1], s * off[:, 0] + c * off[:, 1], off[:, 2]], 1)
        parts = Parts(part_centre, self.part_half, yaw, self.obj_cls[obj], obj, self.part_colour, self.part_texture,
                      self.part_reflectivity)
        if near is not None:
            reach = np.linalg.norm(self.part_half[:, :2], axis=1)
            keep = np.linalg.norm(part_centre[:, :2] - np.asarray(near)[:2], axis=1) < radius + reach
            parts = parts.select(keep)
        return parts

    def objects_at(self, t):
        """Annotated object boxes at time t: centres (O, 3), yaws (O,), velocities (O, 3), all objects."""
        return self.obj_centre0 + self.obj_velocity * t, self.obj_yaw, self.obj_velocity


def _occ_class(category):
    return C.CATEGORY_TO_OCC3D[category]
