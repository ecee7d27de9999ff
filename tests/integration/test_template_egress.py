"""``FixedEgressIps``: with it on, the functions that talk to mail servers leave through two NAT
gateways with Elastic IPs; with it off (the default) no VPC exists and no function is in one.

The template is rendered by SAM's own translator (what ``sam deploy`` sends to CloudFormation) and
its conditions evaluated for the parameter value, as CloudFormation would.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from samtranslator.translator.transform import transform

from devstack.provision import load_template

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = REPO_ROOT / "template.yaml"
MAIL_FUNCTIONS = ("ApiFunction", "SyncWorkerFunction")
VPC_ACCESS = "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
NO_VALUE = object()


class _NoManagedPolicies:
    """The translator asks IAM for managed policy ARNs only for policies named in ``Policies``: none here."""

    def load(self) -> dict[str, str]:
        return {}


def render(fixed_egress: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The CloudFormation template SAM makes, with the resources and values that the conditions leave."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    template = load_template(TEMPLATE)
    for resource in template["Resources"].values():
        for key in ("CodeUri", "ContentUri"):  # sam package would put S3 locations here
            if key in resource.get("Properties", {}):
                resource["Properties"][key] = "s3://bucket/key"
    parameters = {"JwtIssuer": "https://issuer.example.com", "JwtAudience": ["app"], "FixedEgressIps": fixed_egress}
    rendered = transform(copy.deepcopy(template), parameters, _NoManagedPolicies())
    return _apply_conditions(rendered, {**_defaults(rendered), **parameters})


def _defaults(template: dict[str, Any]) -> dict[str, Any]:
    return {name: spec.get("Default") for name, spec in template["Parameters"].items()}


def _apply_conditions(template: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
    conditions: dict[str, Any] = template.get("Conditions", {})

    def holds(name: str) -> bool:
        return bool(evaluate(conditions[name]))

    def evaluate(value: Any) -> Any:
        if isinstance(value, dict) and len(value) == 1:
            ((fn, arg),) = value.items()
            if fn == "Fn::If":
                return evaluate(arg[1] if holds(arg[0]) else arg[2])
            if fn == "Fn::Equals":
                left, right = (evaluate(a) for a in arg)
                return str(left) == str(right)
            if fn == "Fn::Not":
                return not evaluate(arg[0])
            if fn == "Condition":
                return holds(arg)
            if fn == "Ref" and arg == "AWS::NoValue":
                return NO_VALUE
            if fn == "Ref" and arg in parameters:
                return parameters[arg]
        if isinstance(value, dict):
            return {k: v for k, v in ((k, evaluate(v)) for k, v in value.items()) if v is not NO_VALUE}
        if isinstance(value, list):
            return [v for v in (evaluate(v) for v in value) if v is not NO_VALUE]
        return value

    kept = {}
    for section in ("Resources", "Outputs"):
        kept[section] = {
            name: evaluate({k: v for k, v in body.items() if k != "Condition"})
            for name, body in template.get(section, {}).items()
            if "Condition" not in body or holds(body["Condition"])
        }
    return kept


def ref(name: str) -> dict[str, str]:
    return {"Ref": name}


def test_on_the_mail_functions_run_in_the_private_subnets_behind_two_nat_gateways(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfn = render("true", monkeypatch)
    resources = cfn["Resources"]
    private = [ref("EgressPrivateSubnetA"), ref("EgressPrivateSubnetB")]
    for name in MAIL_FUNCTIONS:
        function = resources[name]["Properties"]
        assert function["VpcConfig"] == {"SecurityGroupIds": [ref("EgressFunctionSecurityGroup")], "SubnetIds": private}
        role = resources[function["Role"]["Fn::GetAtt"][0]]["Properties"]
        assert VPC_ACCESS in role["ManagedPolicyArns"], f"{name} cannot create its network interfaces"
    assert "VpcConfig" not in resources["SchedulerFunction"]["Properties"]  # it talks to AWS only

    # Each private subnet routes the internet to the NAT gateway of its own AZ, which has an Elastic IP
    # and sits in a public subnet of that AZ.
    routes = {
        r["Properties"]["RouteTableId"]["Ref"]: r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::EC2::Route"
    }
    associations = {
        a["Properties"]["SubnetId"]["Ref"]: a["Properties"]["RouteTableId"]["Ref"]
        for a in resources.values()
        if a["Type"] == "AWS::EC2::SubnetRouteTableAssociation"
    }
    zones, addresses = [], []
    for subnet in ("EgressPrivateSubnetA", "EgressPrivateSubnetB"):
        nat = resources[routes[associations[subnet]]["NatGatewayId"]["Ref"]]["Properties"]
        public = nat["SubnetId"]["Ref"]
        assert "GatewayId" in routes[associations[public]], f"{public} has no route to the internet gateway"
        zone = resources[subnet]["Properties"]["AvailabilityZone"]
        assert resources[public]["Properties"]["AvailabilityZone"] == zone
        zones.append(zone["Fn::Select"][0])
        addresses.append(nat["AllocationId"]["Fn::GetAtt"][0])
    assert sorted(zones) == [0, 1] and sorted(addresses) == ["EgressIpA", "EgressIpB"]
    assert all(resources[a]["Type"] == "AWS::EC2::EIP" for a in addresses)

    # S3 and DynamoDB never pass the NAT gateways (gateway endpoints on both private route tables).
    endpoints = {
        e["Properties"]["ServiceName"]["Fn::Sub"].rsplit(".", 1)[1]: e["Properties"]
        for e in resources.values()
        if e["Type"] == "AWS::EC2::VPCEndpoint"
    }
    assert set(endpoints) == {"s3", "dynamodb"}
    for endpoint in endpoints.values():
        assert endpoint["VpcEndpointType"] == "Gateway"
        assert endpoint["RouteTableIds"] == [
            ref(associations[s]) for s in ("EgressPrivateSubnetA", "EgressPrivateSubnetB")
        ]

    assert cfn["Outputs"]["EgressIps"]["Value"] == {"Fn::Join": [", ", [ref("EgressIpA"), ref("EgressIpB")]]}


def test_off_there_is_no_vpc_and_no_function_in_one(monkeypatch: pytest.MonkeyPatch) -> None:
    cfn = render("false", monkeypatch)
    assert [n for n, r in cfn["Resources"].items() if r["Type"].startswith("AWS::EC2::")] == []
    functions = {n: r["Properties"] for n, r in cfn["Resources"].items() if r["Type"] == "AWS::Lambda::Function"}
    assert set(MAIL_FUNCTIONS) <= set(functions)
    assert [n for n, p in functions.items() if "VpcConfig" in p] == []
    assert "EgressIps" not in cfn["Outputs"]


def test_off_is_the_default() -> None:
    assert load_template(TEMPLATE)["Parameters"]["FixedEgressIps"]["Default"] == "false"


def test_cfn_lint_is_clean_with_fixed_egress_on(tmp_path: Path) -> None:
    # `make validate` lints the template with its defaults (off); here the default is flipped.
    text = TEMPLATE.read_text()
    block = text.index("  FixedEgressIps:\n")
    flipped = text[:block] + text[block:].replace('Default: "false"', 'Default: "true"', 1)
    assert flipped != text
    copy_path = tmp_path / "template.yaml"
    copy_path.write_text(flipped)
    cfn_lint = shutil.which("cfn-lint", path=str(Path(sys.executable).parent))
    assert cfn_lint, "cfn-lint (installed with aws-sam-cli) is missing from the venv"
    result = subprocess.run(
        [cfn_lint, "--regions", "eu-west-1", "--", str(copy_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
