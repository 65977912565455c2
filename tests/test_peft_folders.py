"""Adapters trained elsewhere: a plain peft folder (no peftlab.json), as the Hub holds
them, works with predict, merge and serve; one that does not fit its base is refused."""

import json
import shutil

import pytest

from peftlab.cli import main


def write_peft_adapter(base, folder, names="someone/tiny-llama", targets=("q_proj", "v_proj")):
    """What `peft` itself saves: a random (non-zero) LoRA on the tiny llama."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=4, target_modules=list(targets), init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(folder)
    settings = json.loads((folder / "adapter_config.json").read_text())
    settings["base_model_name_or_path"] = names
    (folder / "adapter_config.json").write_text(json.dumps(settings))
    return peft_model.eval()


def peft_generation(peft_model, tokenizer_dir, text, max_new_tokens=32) -> str:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = tokenizer(text, return_tensors="pt").input_ids
    out = peft_model.generate(input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


@pytest.fixture(scope="module")
def plain(tiny_llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hub") / "adapter"
    model = write_peft_adapter(tiny_llama, folder, names=str(tiny_llama))
    return folder, model


def test_predict_merge_and_serve_a_plain_peft_folder(plain, tiny_llama, tmp_path, capsys):
    import openai

    from peftlab.serving import start

    folder, peft_model = plain
    expected = peft_generation(peft_model, tiny_llama, "the film was good")
    capsys.readouterr()
    argv = ["predict", "--adapter", str(folder), "the film was good"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["generation"] == expected
    assert main(["merge", "--adapter", str(folder), "--out", str(tmp_path / "merged")]) == 0
    server = start({"hub": str(folder)}, port=0).start()
    try:
        with openai.OpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0) as client:
            answer = client.completions.create(
                model="hub", prompt="the film was good", max_tokens=32
            )
            assert answer.choices[0].text.strip() == expected
            assert [m.id for m in client.models.list().data] == [str(tiny_llama), "hub"]
    finally:
        server.stop()


def test_a_plain_folder_naming_an_unreachable_hub_base_takes_base(tiny_llama, tmp_path, capsys):
    folder = tmp_path / "adapter"
    write_peft_adapter(tiny_llama, folder)  # names someone/tiny-llama
    assert main(["predict", "--adapter", str(folder), "--base", str(tiny_llama), "hello"]) == 0


def test_tensors_that_fit_no_module_are_refused(plain, tiny_llama, tmp_path, capsys):
    folder = tmp_path / "edited"
    shutil.copytree(plain[0], folder)
    settings = json.loads((folder / "adapter_config.json").read_text())
    settings["target_modules"] = ["q_proj"]  # the saved v_proj tensors now fit nothing
    (folder / "adapter_config.json").write_text(json.dumps(settings))
    capsys.readouterr()
    assert main(["predict", "--adapter", str(folder), "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "match no module of this base model" in err and "\n" not in err


def test_a_plain_classifier_or_unknown_type_is_one_clear_error(plain, tmp_path, capsys):
    for edit, message in (
        ({"task_type": "SEQ_CLS"}, "a SEQ_CLS peft adapter"),
        ({"peft_type": "VERA"}, "a VERA adapter"),
        ({"base_model_name_or_path": None}, "names no base model"),
    ):
        folder = tmp_path / str(len(message))
        shutil.copytree(plain[0], folder)
        settings = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps({**settings, **edit}))
        capsys.readouterr()
        assert main(["predict", "--adapter", str(folder), "x"]) == 2
        assert message in capsys.readouterr().err
