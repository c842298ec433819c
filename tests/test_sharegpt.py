from predictors.sharegpt import Conversation, Turn, iter_conversations, iter_prompt_reply_pairs


def test_packaged_dataset_parses_record_by_record_despite_truncation():
    convs = list(iter_conversations(limit=50))
    assert len(convs) == 50
    assert all(c.turns and c.id for c in convs)


def test_truncated_file_keeps_whole_records(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text(
        '[{"id": "a_0", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},\n'
        ' {"id": "a_1", "conversations": [{"from": "human", "value": "more"}]}, {"id": "b_0", "conversa'
    )
    convs = list(iter_conversations(path))
    assert [c.id for c in convs] == ["a_0", "a_1"]
    assert {c.group for c in convs} == {"a"}
    assert list(iter_prompt_reply_pairs(path)) == [("hi", "yo")]


def test_group_of_ids_without_part_suffix():
    assert Conversation(id="plain", turns=(Turn("human", "x"),)).group == "plain"
    assert Conversation(id="x_y_12", turns=(Turn("human", "x"),)).group == "x_y"
