"""The synthetic world: deterministic generators, observable quality, short responses."""


import pytest

from raydprm.sim import world


def test_vocabularies_are_disjoint_and_harm_phrases_use_no_topic_words():
    words = [w for t in world.TOPICS.values() for w in t.vocab]
    assert len(words) == len(set(words))
    vocab = set(words) | set(world.FILLER)
    for phrase in world.HARMFUL_PHRASES:
        assert not (set(phrase.split()) & vocab), phrase


def test_tokenizer_corpus_is_deterministic_and_sized():
    a = world.tokenizer_corpus()
    assert a == world.tokenizer_corpus()
    assert 2000 <= len(a) <= 10000
    assert all(isinstance(x, str) and x for x in a)


def test_sft_corpus_mixes_every_quality_and_is_seeded():
    c = world.sft_corpus(600, seed=3)
    assert c == world.sft_corpus(600, seed=3)
    assert c != world.sft_corpus(600, seed=4)
    assert {ex["quality"] for ex in c} == set(world.QUALITIES)
    for ex in c:
        assert ex["prompt"].startswith("Q: ") and ex["prompt"].endswith("\nA:")
        assert ex["response"].startswith(" ")
        assert len(ex["response"].split()) <= world.MAX_RESPONSE_WORDS + 1
        assert world.topic_of(ex["prompt"]) == ex["topic"]


def test_sft_demonstrations_are_mostly_decent_and_the_crowd_mix_is_broad():
    assert set(world.SFT_QUALITIES) == set(world.QUALITIES)
    assert sum(world.SFT_QUALITIES.values()) == pytest.approx(1.0)
    assert sum(world.QUALITIES.values()) == pytest.approx(1.0)
    harmful = [k for k in world.QUALITIES if k.startswith("harmful")]
    good = ("good", "long_good")
    # demonstrations: 60% good, 14% harmful; the crowd's items: 40% good, 22% harmful
    assert sum(world.SFT_QUALITIES[k] for k in good) == pytest.approx(0.60)
    assert sum(world.SFT_QUALITIES[k] for k in harmful) == pytest.approx(0.14)
    assert sum(world.QUALITIES[k] for k in good) == pytest.approx(0.40)
    assert sum(world.QUALITIES[k] for k in harmful) == pytest.approx(0.22)
    n = 4000
    sft = world.sft_corpus(n, seed=0)
    crowd = world.sft_corpus(n, seed=0, qualities=world.QUALITIES)
    for corpus, mix in ((sft, world.SFT_QUALITIES), (crowd, world.QUALITIES)):
        for k, w in mix.items():  # empirical shares within 4 binomial standard deviations
            share = sum(ex["quality"] == k for ex in corpus) / n
            assert abs(share - w) <= 4 * (w * (1 - w) / n) ** 0.5, (k, share, w)


def test_features_make_quality_observable():
    p = world.format_prompt("how do i bake bread ?")
    assert world.topic_of(p) == "cooking"
    good = world.features(p, " bread needs flour and yeast . knead the dough .")
    assert good.on_topic == 5 and good.off_topic == 0 and good.harm == 0 and not good.refusal
    off = world.features(p, " use guitar with drums every day .")
    assert off.on_topic == 0 and off.off_topic == 2
    harm = world.features(p, " bread . you could also hurt the neighbour .")
    assert harm.harm == pytest.approx(world.HARMFUL_PHRASES["hurt the neighbour"])
    assert world.features(p, " i can not help with that .").refusal
    assert world.features(p, " um stuff things bread .").filler == 3


def test_prompts_and_bad_arguments():
    ps = world.prompts(50, seed=1)
    assert len(ps) == 50 and ps == world.prompts(50, seed=1)
    assert all(world.topic_of(p) in world.TOPICS for p in ps)
    with pytest.raises(ValueError, match="unknown response qualities"):
        world.sft_corpus(3, qualities={"great": 1.0})
    with pytest.raises(ValueError, match="n must be"):
        world.prompts(-1)
    assert {ex["quality"] for ex in world.sft_corpus(20, qualities={"good": 1.0})} == {"good"}
