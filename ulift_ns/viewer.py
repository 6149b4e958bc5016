"""Click-to-select in nerfstudio's web viewer: pick instances, show only / remove / highlight them, export.

The controls live on ``InstanceSelector``, an ``nn.Module`` child of the model, because
nerfstudio finds viewer elements by walking the pipeline's modules.  A click renders the
current view, reads the instance label under the cursor and toggles it in the
selection.  "Only" and "remove" re-render with the per-Gaussian 3D labels, so removing
an object reveals what is behind it instead of painting a hole.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable, Optional, Set, Tuple

import torch
from torch import nn

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.utils.rich_utils import CONSOLE
from nerfstudio.viewer.viewer_elements import ViewerButton, ViewerCheckbox, ViewerClick, ViewerControl, ViewerDropdown

HIGHLIGHT, ONLY, REMOVE = "highlight", "only selection", "remove selection"
CLICK_RENDER_HEIGHT = 256
"""Height of the render a click is resolved on; labels are stable enough not to need full size."""

CameraProvider = Callable[[int, int], Optional[Cameras]]


class InstanceSelector(nn.Module):
    """Selection state and viewer controls; the model asks it for the ``selection`` output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        object.__setattr__(self, "_model", model)  # not a submodule: that would be a reference cycle
        self.selected: Set[int] = set()
        self.viewer_control = ViewerControl()
        self.click_to_select = ViewerCheckbox(
            "Click to select", False, cb_hook=self._on_toggle_clicking, hint="While on, clicks pick objects (orbiting is paused)."
        )
        self.mode = ViewerDropdown("Show", HIGHLIGHT, [HIGHLIGHT, ONLY, REMOVE], hint="How the 'selection' output shows it.")
        self.clear_selection = ViewerButton("Clear selection", cb_hook=lambda _: self.selected.clear())
        self.export_selection = ViewerButton("Export selection", cb_hook=lambda _: self.export())
        self._camera_provider: Optional[CameraProvider] = None

    # --- clicks -------------------------------------------------------------------------------
    def _on_toggle_clicking(self, checkbox: ViewerCheckbox) -> None:
        if checkbox.value:
            self.viewer_control.register_pointer_cb("click", self.on_click)
        else:
            self.viewer_control.unregister_pointer_cb()

    def set_camera_provider(self, provider: Optional[CameraProvider]) -> None:
        """Where clicks get the current view from; defaults to the viewer's camera (tests inject one)."""
        self._camera_provider = provider

    def _current_camera(self) -> Tuple[Optional[Cameras], int, int]:
        height = CLICK_RENDER_HEIGHT
        if self._camera_provider is not None:
            camera = self._camera_provider(height, height)
            return camera, int(camera.height.item()), int(camera.width.item())
        clients = self.viewer_control.viser_server.get_clients()
        aspect = next(iter(clients.values())).camera.aspect if clients else 1.0
        width = max(1, int(round(height * aspect)))
        return self.viewer_control.get_camera(height, width), height, width

    def _training_lock(self):
        viewer = getattr(self.viewer_control, "viewer", None)
        lock = getattr(viewer, "train_lock", None)
        return lock if lock is not None else contextlib.nullcontext()

    @torch.no_grad()
    def label_at(self, screen_pos: Tuple[float, float]) -> int:
        """Instance label (0 = nothing) under a normalised [0, 1] screen position in the current view."""
        camera, height, width = self._current_camera()
        if camera is None:
            return 0
        model = self._model
        was_training = model.training
        model.eval()
        try:
            labels = model.get_outputs(camera.to(model.device))["instance_id"][..., 0]
        finally:
            model.train(was_training)
        x = min(width - 1, max(0, int(screen_pos[0] * width)))
        y = min(height - 1, max(0, int(screen_pos[1] * height)))
        return int(labels[y, x].item())

    def on_click(self, click: ViewerClick) -> None:
        # Pointer callbacks do not run under the training lock, unlike element callbacks.
        with self._training_lock():
            label = self.label_at(click.screen_pos)
            if label > 0:
                self.selected ^= {label}
        CONSOLE.print(f"Selected instances: {sorted(self.selected) or 'none'}")
        viewer = getattr(self.viewer_control, "viewer", None)
        if viewer is not None:
            viewer._trigger_rerender()

    # --- rendering ----------------------------------------------------------------------------
    def selection_image(
        self,
        rgb: torch.Tensor,
        labels: torch.Tensor,
        gaussian_labels: Callable[[], torch.Tensor],
        render_subset: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """The ``selection`` output: ``rgb`` with the selection highlighted, isolated or removed.

        ``gaussian_labels()`` gives the 3D labels of the Gaussians being rendered (after any crop), as export uses;
        ``render_subset(keep)`` renders RGB from only the Gaussians where ``keep`` is true.
        """
        if not self.selected:
            return rgb
        model = self._model
        chosen = torch.tensor(sorted(self.selected), device=labels.device)
        mode = self.mode.value
        if mode == HIGHLIGHT:
            hit = torch.isin(labels, chosen)
            tint = model.palette[(labels - 1).clamp_min(0)]
            return torch.where(hit[..., None], 0.35 * rgb + 0.65 * tint, 0.6 * rgb)
        keep = torch.isin(gaussian_labels(), chosen)
        return render_subset(keep if mode == ONLY else ~keep)

    # --- export -------------------------------------------------------------------------------
    def export(self) -> Optional[Path]:
        """Write the selection (``selection.json`` in the run folder) and its PLYs to a new folder."""
        from ulift_ns.export import export_segmented, write_selection

        viewer = getattr(self.viewer_control, "viewer", None)
        if not self.selected:
            CONSOLE.print("[yellow]Nothing selected: tick 'Click to select' and click objects first.")
            return None
        if viewer is None:
            CONSOLE.print("[yellow]Export from the viewer needs a running viewer; use `ulift export` instead.")
            return None
        run_dir = Path(viewer.log_filename).parent
        write_selection(run_dir, self.selected)
        out = run_dir / "exports" / time.strftime("selection_%Y%m%d_%H%M%S")
        export_segmented(self._model, out, ids=sorted(self.selected))
        CONSOLE.print(f"Exported instances {sorted(self.selected)} to {out}")
        return out
