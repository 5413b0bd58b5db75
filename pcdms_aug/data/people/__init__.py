"""Procedural pedestrians for the synthetic Market-1501: an identity's look (:mod:`.looks`), a camera's scene
and optics (:mod:`.cameras`), and the drawing (:mod:`.drawing`).

A person is drawn from the 3-D skeleton of ``posegen`` at 4x resolution and reduced to 128x64, so that thin
parts keep their colour. The torso and head are shaded surfaces (an elliptic cylinder and an ellipsoid) whose
paint is fixed on the body: a print on the chest shows only from the front, a backpack from behind, the face
from the front and the hair from behind, and a side view is narrower. The same look in another pose or view is
therefore new information, as in real re-ID data.
"""
from pcdms_aug.data.people.cameras import Camera, make_camera, render
from pcdms_aug.data.people.drawing import SS, draw_person
from pcdms_aug.data.people.looks import Look, sample_look

__all__ = ["Camera", "Look", "SS", "draw_person", "make_camera", "render", "sample_look"]
