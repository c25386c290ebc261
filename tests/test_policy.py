"""The site policy file: one frozen model, and one line naming the key for each mistake."""

import pytest
from pydantic import ValidationError

from privacy.policy import PolicyError, SitePolicy, load_policy, parse_policy


def test_defaults_and_the_lifetime_delta_that_follows_max_delta(tmp_path):
    assert parse_policy({}) == SitePolicy()
    assert SitePolicy().require_dp and SitePolicy().lifetime_delta == 1e-5
    assert parse_policy({"max-delta": 1e-6}).lifetime_delta == 1e-6
    assert parse_policy({"max-delta": 1e-6, "lifetime-delta": 1e-7}).lifetime_delta == 1e-7
    path = tmp_path / "policy.toml"
    path.write_text('max-epsilon-per-run = 3\nallowed-models = ["logistic"]\n')
    policy = load_policy(path)
    assert policy.max_epsilon_per_run == 3.0 and isinstance(policy.max_epsilon_per_run, float)
    assert policy.allowed_models == ("logistic",)
    with pytest.raises(ValidationError, match="frozen"):
        policy.require_dp = False


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"require_dp": True}, "unknown key 'require_dp'; expected accountant, allowed-models,"),
        ({"max-delta": 2}, "max-delta must be a positive number and below 1, got 2"),
        ({"lifetime-delta": 0}, "lifetime-delta must be a positive number and below 1, got 0"),
        ({"lifetime-epsilon": float("inf")}, "lifetime-epsilon must be a positive number, got inf"),
        ({"max-epsilon-per-run": "3"}, "max-epsilon-per-run must be a positive number, got '3'"),
        ({"max-epsilon-per-run": True}, "max-epsilon-per-run must be a positive number, got True"),
        ({"accountant": "gdp"}, "accountant must be one of prv, rdp"),
        ({"min-cell-count": 0}, "min-cell-count must be a whole number of at least 1"),
        ({"min-cell-count": 2.5}, "min-cell-count must be a whole number of at least 1"),
        ({"require-dp": 1}, "require-dp must be true or false"),
        ({"split-column": " "}, "split-column must be a column name"),
        ({"record-id-column": 7}, "record-id-column must be a column name"),
        ({"allowed-studies": "heart"}, "allowed-studies must be a list of names"),
        ({"allowed-models": ["mlp", 1]}, "allowed-models must be a list of names"),
    ],
)
def test_each_mistake_is_one_line_naming_the_key(raw, message):
    with pytest.raises(PolicyError) as error:
        parse_policy(raw, "policy.toml")
    assert str(error.value).startswith(f"policy.toml: {message}"), str(error.value)
