

def test_a_folder_whose_model_type_retokenizes_its_tokenizer_json_warns(tmp_path, bpe):
    """transformers 5 loads a tokenizer as its model type's class (a config.json beside it): for
    a Qwen2 folder that class re-splits our test vocabulary, which we say; a Llama folder keeps it."""
    import json
    import warnings

    from longctx.tokenizer import RetokenizedWarning, load_tokenizer

    for model_type, warns in (("qwen2", True), ("llama", False)):
        folder = tmp_path / model_type
        bpe.hf.save_pretrained(folder)
        (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tok = load_tokenizer(folder)
        retokenized = [w for w in caught if issubclass(w.category, RetokenizedWarning)]
        assert bool(retokenized) == warns, (model_type, type(tok.hf).__name__)
        assert (tok.encode("1234567 is: x9y") != bpe.encode("1234567 is: x9y")) == warns
