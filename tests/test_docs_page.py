"""The pipeline's report writer: a command's table written into its documentation page."""

import pytest

from cmbscat.errors import CmbscatError
from cmbscat.experiment.docs_page import replace_table, write_into_page
from cmbscat.experiment.pipeline import wall_clock

PAGE = """# The paper's experiment

Intro text.

<!-- table:begin results/paper_table.md -->
| old | table |
<!-- table:end -->

Reading, kept.

<!-- table:begin results/other.md -->
| other |
<!-- table:end -->
"""


def test_the_marked_block_and_only_it_is_replaced():
    text = replace_table(PAGE, "results/paper_table.md", "# Title\n\n| new | table |\n|---|---|\n")
    assert "| old | table |" not in text
    assert "<!-- table:begin results/paper_table.md -->\n| new | table |\n|---|---|\n<!-- table:end -->" in text
    assert "# Title" not in text  # the page keeps its own headings
    assert text.replace("| new | table |\n|---|---|", "| old | table |") == PAGE
    assert "| other |" in text and "Reading, kept." in text


def test_a_page_without_the_block_or_a_missing_page_is_refused_in_one_line(tmp_path):
    with pytest.raises(CmbscatError, match="0 blocks marked"):
        replace_table(PAGE, "results/none.md", "| x |")
    table = tmp_path / "t.md"
    table.write_text("| x |\n")
    with pytest.raises(CmbscatError, match="does not exist"):
        write_into_page(tmp_path / "missing.md", "t.md", table)
    page = tmp_path / "page.md"
    page.write_text(PAGE)
    write_into_page(page, "results/other.md", table)
    assert "<!-- table:begin results/other.md -->\n| x |\n<!-- table:end -->" in page.read_text()


def test_wall_clock_is_the_span_of_overlapping_stages():
    spans = {"a": [100.0, 160.0], "b": [110.0, 200.0], "c": [200.0, 230.0]}
    assert wall_clock(spans) == 130.0
    assert wall_clock({}) is None


def test_the_pipeline_refuses_a_docs_page_without_its_block_before_running(tmp_path):
    import json

    from cmbscat.experiment.pipeline import run_pipeline

    page = tmp_path / "page.md"
    page.write_text("# A page with no marked block\n")
    cfg = json.loads(open("pipelines/smoke.json").read())
    cfg.update(out=str(tmp_path / "out"), table=str(tmp_path / "table.md"), docs_page=str(page))
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(cfg))
    with pytest.raises(CmbscatError, match="0 blocks marked"):
        run_pipeline(config, progress=False)
    assert not (tmp_path / "out").exists()  # nothing ran
