from sim_bridge.common.tables import markdown_table


def test_markdown_table_quotes_pipes_and_marks_missing_values():
    table = markdown_table(("name", "value"), [("a|b", 1.5), ("c", None)])
    assert table.splitlines() == ["| name | value |", "| --- | --- |", "| a\\|b | 1.5 |", "| c | - |"]
