"""``RelayDomain``: set, SES receives the domain's mail (raw message to the bucket under ``relay/``,
then the relay ingest function); empty (the default), none of it exists.

Rendered by SAM's own translator with the conditions evaluated, as in test_template_egress.py.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from samtranslator.translator.transform import transform

from devstack.provision import load_template
from tests.integration.test_template_egress import TEMPLATE, _apply_conditions, _defaults, _NoManagedPolicies

RELAY_RESOURCES = {
    "RelayIngestFunction",
    "RelayIngestFunctionLogGroup",
    "RelayIngestPermission",
    "RelayDomainIdentity",
    "RelayReceiptRuleSet",
    "RelayReceiptRule",
    "RelayDeadLetterQueue",
    "RelayDeadLetterQueueAlarm",
    "RelayIngestFunctionEventInvokeConfig",
}


def render(relay_domain: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    template = load_template(TEMPLATE)
    for resource in template["Resources"].values():
        for key in ("CodeUri", "ContentUri"):
            if key in resource.get("Properties", {}):
                resource["Properties"][key] = "s3://bucket/key"
    parameters = {"JwtIssuer": "https://issuer.example.com", "JwtAudience": ["app"], "RelayDomain": relay_domain}
    rendered = transform(copy.deepcopy(template), parameters, _NoManagedPolicies())
    return _apply_conditions(rendered, {**_defaults(rendered), **parameters})


def _ses_statements(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in policy["Statement"] if s.get("Principal") == {"Service": "ses.amazonaws.com"}]


def test_off_by_default_nothing_of_the_relay_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    cfn = render("", monkeypatch)
    resources = cfn["Resources"]
    assert not RELAY_RESOURCES & set(resources)
    assert not any(r["Type"].startswith("AWS::SES::") for r in resources.values())
    assert not _ses_statements(resources["RawMailBucketPolicy"]["Properties"]["PolicyDocument"])
    assert not _ses_statements(resources["RawMailKey"]["Properties"]["KeyPolicy"])
    assert "RelayMxRecord" not in cfn["Outputs"]


def test_on_ses_writes_raw_mail_under_relay_and_invokes_the_ingest_function(monkeypatch: pytest.MonkeyPatch) -> None:
    cfn = render("mail.crm.example.com", monkeypatch)
    resources = cfn["Resources"]
    assert set(resources) >= RELAY_RESOURCES

    rule = resources["RelayReceiptRule"]["Properties"]["Rule"]
    assert rule["Recipients"] == ["mail.crm.example.com"] and rule["ScanEnabled"] is True
    s3_action, lambda_action = (a for a in rule["Actions"])
    # The raw message is in the bucket before the function runs (actions run in order).
    assert s3_action["S3Action"] == {"BucketName": {"Ref": "RawMailBucket"}, "ObjectKeyPrefix": "relay/"}
    assert lambda_action["LambdaAction"]["FunctionArn"] == {"Fn::GetAtt": ["RelayIngestFunction", "Arn"]}
    assert lambda_action["LambdaAction"]["InvocationType"] == "Event"
    assert set(resources["RelayReceiptRule"]["DependsOn"]) >= {"RelayIngestPermission", "RawMailBucketPolicy"}

    # SES may write under relay/ only, and use the bucket's key for it; both only from this account.
    [bucket] = _ses_statements(resources["RawMailBucketPolicy"]["Properties"]["PolicyDocument"])
    assert bucket["Action"] == "s3:PutObject" and bucket["Resource"] == {"Fn::Sub": "${RawMailBucket.Arn}/relay/*"}
    [key] = _ses_statements(resources["RawMailKey"]["Properties"]["KeyPolicy"])
    for statement in (bucket, key):
        assert statement["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    permission = resources["RelayIngestPermission"]["Properties"]
    assert permission["Principal"] == "ses.amazonaws.com" and permission["SourceAccount"] == {"Ref": "AWS::AccountId"}

    # The API hands out addresses, the ingest function checks them.
    function = resources["RelayIngestFunction"]["Properties"]
    assert function["Environment"]["Variables"]["MAILSYNC_RELAY_DOMAIN"] == "mail.crm.example.com"
    assert resources["ApiFunction"]["Properties"]["Environment"]["Variables"]["MAILSYNC_RELAY_DOMAIN"] == (
        "mail.crm.example.com"
    )
    assert "inbound-smtp" in cfn["Outputs"]["RelayMxRecord"]["Value"]["Fn::Sub"]


def test_on_a_failed_ingest_lands_in_an_encrypted_queue_that_alarms(monkeypatch: pytest.MonkeyPatch) -> None:
    resources = render("mail.crm.example.com", monkeypatch)["Resources"]
    invoke = resources["RelayIngestFunctionEventInvokeConfig"]["Properties"]
    assert invoke["FunctionName"] == {"Ref": "RelayIngestFunction"}
    assert invoke["DestinationConfig"]["OnFailure"]["Destination"] == {"Fn::GetAtt": ["RelayDeadLetterQueue", "Arn"]}
    assert resources["RelayDeadLetterQueue"]["Properties"]["SqsManagedSseEnabled"] is True
    alarm = resources["RelayDeadLetterQueueAlarm"]["Properties"]
    assert alarm["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["RelayDeadLetterQueue", "QueueName"]}}
    ]
    assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]
    # The function may send to its failure destination.
    role = resources["RelayIngestFunctionRole"]["Properties"]
    sends = [
        s
        for policy in role["Policies"]
        for s in policy["PolicyDocument"]["Statement"]
        if "sqs:SendMessage" in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])
    ]
    assert sends


def test_relayed_raw_mail_expires_from_its_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    rules = render("", monkeypatch)["Resources"]["RawMailBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    [relay] = [r for r in rules if r.get("Prefix") == "relay/"]
    assert relay["Status"] == "Enabled" and relay["ExpirationInDays"] == 7
