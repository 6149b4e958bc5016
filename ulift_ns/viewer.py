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
from nerfstudio.viewer.viewer_elements import (
    ViewerButton,
    ViewerCheckbox,
    ViewerClick,
    ViewerControl,
    ViewerDropdown,
    ViewerElement,
)

HIGHLIGHT, ONLY, REMOVE = "highlight", "only selection", "remove selection"
CLICK_RENDER_HEIGHT = 256
"""Height of the render a click is resolved on; labels are stable enough not to need full size."""

CameraProvider = Callable[[int, int], Optional[Cameras]]
SELECTION_OUTPUT = "selection"
"""The render output the Show modes act on."""
NOTHING_HERE = "Nothing here: that click hit the background, so the selection is unchanged."


def swatch_markdown(rgb: Tuple[int, int, int], size: int = 12) -> str:
    """A small colour square as an inline markdown image (data URI: no file, works in viser's markdown)."""
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), tuple(int(c) for c in rgb)).save(buffer, format="PNG")
    return f"![#{rgb[0]:02x}{rgb[1]:02x}{rgb[2]:02x}](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})"


class ViewerMarkdown(ViewerElement[str]):
    """Read-only markdown in the viewer's panel (nerfstudio has no such element); ``content`` is kept when headless."""

    def __init__(self, name: str, content: str = ""):
        super().__init__(name)
        self.content = content

    def _create_gui_handle(self, viser_server) -> None:
        self.gui_handle = viser_server.gui.add_markdown(self.content)

    def install(self, viser_server) -> None:
        self._create_gui_handle(viser_server)

    def set(self, content: str) -> None:
        self.content = content
        if self.gui_handle is not None:
            self.gui_handle.content = content


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
        self.mode = ViewerDropdown(
            "Show", HIGHLIGHT, [HIGHLIGHT, ONLY, REMOVE], cb_hook=self._on_mode,
            hint="Acts on Output type 'selection' (choosing a mode switches to it).",
        )  # fmt: skip
        self.clear_selection = ViewerButton("Clear selection", cb_hook=lambda _: self.set_selection(set()))
        self.export_selection = ViewerButton("Export selection", cb_hook=lambda _: self.export())
        self.feedback = ViewerMarkdown("Selection info", "**Selection:** none. Tick *Click to select*, then click objects.")
        self.status = ""
        """The last click / export outcome, shown under the selection."""
        self.run_dir: Optional[Path] = None
        """Where ``selection.json`` goes; defaults to the viewer's run folder (``config.yml``'s)."""
        self._camera_provider: Optional[CameraProvider] = None
        self._resolving_click = False

    # --- selection state ----------------------------------------------------------------------
    def _viewer(self):
        return getattr(self.viewer_control, "viewer", None)

    def selection_folder(self) -> Optional[Path]:
        if self.run_dir is not None:
            return Path(self.run_dir)
        log = getattr(self._viewer(), "log_filename", None)
        return Path(log).parent if log is not None else None

    def set_selection(self, ids: Set[int], status: str = "") -> None:
        """Change the selection: save ``selection.json`` (atomic) and refresh the panel."""
        self.selected = {int(i) for i in ids}
        self.status = status
        self.persist()
        self.refresh_feedback()

    def persist(self) -> Optional[Path]:
        """``RUN/selection.json`` = the current selection, so ``ulift export --selection`` exports exactly it."""
        from ulift_ns.export import write_selection

        folder = self.selection_folder()
        if folder is None:
            return None
        return write_selection(folder, self.selected)

    def gaussian_counts(self) -> dict:
        """Gaussians per selected id, by the per-Gaussian 3D labels (what export and Only/Remove use)."""
        if not self.selected:
            return {}
        labels = self._model.gaussian_labels()[0]
        chosen = torch.tensor(sorted(self.selected), device=labels.device)
        counts = (labels[:, None] == chosen[None, :]).sum(0).tolist()
        return dict(zip(sorted(self.selected), counts))

    def feedback_markdown(self) -> str:
        palette = self._model.palette
        if self.selected:
            lines = [f"**Selection:** {len(self.selected)} object(s) (Output type `{SELECTION_OUTPUT}` shows them)"]
            for label, count in self.gaussian_counts().items():
                rgb = tuple(int(round(float(c) * 255)) for c in palette[(label - 1) % palette.shape[0]])
                lines.append(f"- {swatch_markdown(rgb)} id **{label}**: {count:,} Gaussians")
        else:
            lines = ["**Selection:** none. Tick *Click to select*, then click objects."]
        if self.status:
            lines.append(f"\n{self.status}")
        return "\n".join(lines)

    def refresh_feedback(self) -> None:
        self.feedback.set(self.feedback_markdown())

    def _on_mode(self, _dropdown) -> None:
        """Show modes act on the ``selection`` output: switch to it, or say so."""
        panel = getattr(self._viewer(), "control_panel", None)
        output = getattr(panel, "_output_render", None)
        if output is not None and getattr(panel, "output_render", None) != SELECTION_OUTPUT:
            try:
                output.value = SELECTION_OUTPUT
                self.status = f"Output type switched to `{SELECTION_OUTPUT}`: *Show* acts on it."
            except Exception:  # the output list may not hold it yet (before the first render)
                self.status = f"*Show* acts on Output type `{SELECTION_OUTPUT}`: choose it above."
        self.refresh_feedback()

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
        self._resolving_click = True  # the click needs labels only: skip the selection image (a 2nd render)
        try:
            labels = model.get_outputs(camera.to(model.device))["instance_id"][..., 0]
        finally:
            self._resolving_click = False
            model.train(was_training)
        x = min(width - 1, max(0, int(screen_pos[0] * width)))
        y = min(height - 1, max(0, int(screen_pos[1] * height)))
        return int(labels[y, x].item())

    def on_click(self, click: ViewerClick) -> None:
        # Pointer callbacks do not run under the training lock, unlike element callbacks.
        with self._training_lock():
            label = self.label_at(click.screen_pos)
            if label > 0:
                verb = "removed from" if label in self.selected else "added to"
                self.set_selection(self.selected ^ {label}, f"Object {label} {verb} the selection.")
            else:
                self.status = NOTHING_HERE
                self.refresh_feedback()
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
        if not self.selected or self._resolving_click:
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
        from ulift_ns.export import export_segmented

        run_dir = self.selection_folder()
        if not self.selected:
            message = "Nothing selected: tick *Click to select* and click objects first."
        elif run_dir is None:
            message = "Export from the viewer needs a running viewer; use `ulift export` instead."
        else:
            message = ""
        if message:
            self.status = message
            self.refresh_feedback()
            CONSOLE.print(f"[yellow]{message}")
            return None
        self.persist()
        out = run_dir / "exports" / time.strftime("selection_%Y%m%d_%H%M%S")
        summary = export_segmented(self._model, out, ids=sorted(self.selected))
        files = len(summary["exported_ids"]) + 2  # object PLYs + scene_instances.ply + objects.json
        self.status = f"Exported {len(summary['exported_ids'])} object(s), {files} files, to `{out}`."
        self.refresh_feedback()
        CONSOLE.print(f"Exported instances {sorted(self.selected)} ({files} files) to {out}")
        return out
