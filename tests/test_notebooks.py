"""Both notebooks execute top to bottom on a tiny configuration (nbclient)."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(name, tmp_path, monkeypatch, **env):
  monkeypatch.setenv("LPG_TINY", "1")
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  nb = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
  NotebookClient(nb, timeout=300, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  text = []
  for cell in nb.cells:
    for out in cell.get("outputs", []):
      text.append(out.get("text", ""))
      text.append(out.get("data", {}).get("text/plain", ""))
  return nb, "\n".join(text)


def test_generalisation_notebook(tmp_path, monkeypatch):
  nb, text = _run("generalisation.ipynb", tmp_path, monkeypatch, LPG_ALGOS="lpg,a2c")
  assert "| env | role | algo |" in text   # the role column: the rule never saw chain/short
  assert "chain/short" in text and "ratio_to_a2c" in text
  images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
  assert len(images) >= 2


def test_rule_analysis_notebook(tmp_path, monkeypatch):
  nb, text = _run("rule_analysis.ipynb", tmp_path, monkeypatch)
  import re
  for name in ("y_vs_true_value", "pi_hat_vs_advantage", "y_vs_return"):
    assert re.search(name + r"\s*:\s*-?\d+\.\d{3}", text), name
  assert re.search(r"A2C pi_hat_vs_advantage:\s*-?\d\.\d{3}", text)
