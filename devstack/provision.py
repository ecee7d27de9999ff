"""Create Mailsync's stateful resources in a local AWS emulator (moto) from template.yaml.

template.yaml is the single source of truth: every resource of a supported type
(see ``SUPPORTED_TYPES``) is read from it and created through boto3, either
against a moto server (``endpoint_url``) or inside ``moto.mock_aws()``
(``endpoint_url=None``).  The function environment is then resolved from
``Globals.Function.Environment.Variables``.

Physical names are ``{prefix}-{LogicalId}`` (lower-cased for S3 buckets).
Everything is idempotent: provisioning the same endpoint again reuses what exists.

Not reproduced locally (no effect on the emulator): key policies, bucket
policies, bucket lifecycle rules, tags, deletion policies.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import boto3
import yaml
from botocore.config import Config
from botocore.exceptions import ClientError

__all__ = [
    "DEFAULT_TEMPLATE",
    "SUPPORTED_TYPES",
    "ProvisionError",
    "load_template",
    "physical_name",
    "provision",
    "provision_mock",
]

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = Path(__file__).resolve().parent.parent / "template.yaml"
# The functions reach AWS at this endpoint: declared empty in the template so that sam local's
# --env-vars can set it (sam local passes only declared variables).
ENDPOINT_VARIABLE = "AWS_ENDPOINT_URL"

TABLE = "AWS::DynamoDB::Table"
BUCKET = "AWS::S3::Bucket"
QUEUE = "AWS::SQS::Queue"
KEY = "AWS::KMS::Key"
ALIAS = "AWS::KMS::Alias"
EVENT_BUS = "AWS::Events::EventBus"
SUPPORTED_TYPES = (KEY, ALIAS, TABLE, BUCKET, QUEUE, EVENT_BUS)

_KEY_MARKER_TAG = "mailsync:devstack-logical-id"


class ProvisionError(RuntimeError):
    """The template cannot be provisioned (unsupported construct, drift, ...)."""


# --------------------------------------------------------------------------- YAML


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that understands CloudFormation short-form tags (``!Ref`` ...)."""


# CloudFormation treats 2010-09-09 as a string, not a date.
_CfnLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_cfn_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix in ("Ref", "Condition"):
        return {suffix: value}
    if suffix == "GetAtt" and isinstance(value, str):
        logical_id, _, attribute = value.partition(".")
        value = [logical_id, attribute]
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _construct_cfn_tag)


_parsed: dict[tuple[str, int, int], dict[str, Any]] = {}


def load_template(path: Path) -> dict[str, Any]:
    """Load a CloudFormation/SAM YAML (or JSON) template, short-form tags turned into long forms.
    Parsed once per file version (the tests provision a stack per test: the YAML parse was a
    fifth of that); each caller gets its own copy."""
    stat = Path(path).stat()
    version = (str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)
    if version not in _parsed:
        with Path(path).open(encoding="utf-8") as fh:
            document = yaml.load(fh, Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
        if not isinstance(document, dict) or not isinstance(document.get("Resources"), dict):
            raise ProvisionError(f"{path} is not a CloudFormation template (no Resources mapping)")
        _parsed[version] = document
    return copy.deepcopy(_parsed[version])


# --------------------------------------------------------------------------- helpers


def physical_name(prefix: str, logical_id: str, resource_type: str | None = None) -> str:
    """Local physical name of a resource: ``{prefix}-{LogicalId}``, lower-cased for buckets."""
    name = f"{prefix}-{logical_id}"
    if resource_type == BUCKET:
        name = re.sub(r"[^a-z0-9.-]", "-", name.lower())[:63].strip(".-")
    elif resource_type == KEY:  # used for the marker alias
        name = re.sub(r"[^A-Za-z0-9/_-]", "-", name)
    return name


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _cfn_str(value: Any) -> str:
    """CloudFormation's string form of a scalar (booleans lower-case)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _drop_none(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in mapping.items() if value is not None}


_NO_VALUE = object()
_SUB_VARIABLE = re.compile(r"\$\{([^}]*)\}")


# --------------------------------------------------------------------------- stack


class _LocalStack:
    def __init__(
        self,
        template: Mapping[str, Any],
        session: boto3.session.Session,
        endpoint_url: str | None,
        prefix: str,
        parameter_overrides: Mapping[str, Any] | None,
        clients: dict[str, Any] | None = None,
    ) -> None:
        self.template = template
        self.resources: dict[str, Any] = dict(template.get("Resources") or {})
        self.session = session
        self.endpoint_url = endpoint_url
        self.prefix = prefix
        region = session.region_name
        if not region:
            raise ProvisionError("no AWS region configured (set AWS_DEFAULT_REGION or pass a session)")
        self.region: str = region
        self.parameters = self._parameter_values(parameter_overrides or {})
        self._clients: dict[str, Any] = {} if clients is None else clients
        self._attributes: dict[str, dict[str, Any]] = {}
        self._in_progress: list[str] = []
        self._conditions: dict[str, bool] = {}
        self._account_id: str | None = None

    # ----------------------------------------------------------------- plumbing
    def client(self, service: str) -> Any:
        if service not in self._clients:
            kwargs: dict[str, Any] = {"region_name": self.region}
            if self.endpoint_url:
                kwargs["endpoint_url"] = self.endpoint_url
                if service == "s3":
                    kwargs["config"] = Config(s3={"addressing_style": "path"})
            self._clients[service] = self.session.client(service, **kwargs)
        return self._clients[service]

    def _parameter_values(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        declared = self.template.get("Parameters") or {}
        unknown = set(overrides) - set(declared)
        if unknown:
            raise ProvisionError(f"parameter overrides for undeclared parameters: {sorted(unknown)}")
        values: dict[str, Any] = {}
        for name, spec in declared.items():
            spec = spec or {}
            raw = overrides.get(name, spec.get("Default"))
            if raw is None:
                values[name] = None
                continue
            if spec.get("Type") == "CommaDelimitedList" or str(spec.get("Type", "")).startswith("List<"):
                values[name] = raw if isinstance(raw, list) else [p.strip() for p in _cfn_str(raw).split(",")]
            else:
                values[name] = _cfn_str(raw)
        return values

    @property
    def account_id(self) -> str:
        if self._account_id is None:
            self._account_id = self.client("sts").get_caller_identity()["Account"]
        return self._account_id

    # ----------------------------------------------------------------- intrinsics
    def resolve(self, value: Any) -> Any:
        if isinstance(value, dict):
            if len(value) == 1:
                ((key, argument),) = value.items()
                if key == "Ref" or key == "Condition" or key.startswith("Fn::"):
                    return self._intrinsic(key, argument)
            resolved_dict = {k: self.resolve(v) for k, v in value.items()}
            return {k: v for k, v in resolved_dict.items() if v is not _NO_VALUE}
        if isinstance(value, list):
            resolved_list = [self.resolve(v) for v in value]
            return [v for v in resolved_list if v is not _NO_VALUE]
        return value

    def _intrinsic(self, fn: str, arg: Any) -> Any:
        if fn == "Ref":
            return self._ref(self.resolve(arg))
        if fn == "Condition":
            return self.condition(arg)
        if fn == "Fn::GetAtt":
            if isinstance(arg, str):
                arg = arg.split(".", 1)
            logical_id, attribute = self.resolve(arg[0]), self.resolve(arg[1])
            return self.get_att(logical_id, attribute)
        if fn == "Fn::Sub":
            return self._sub(arg)
        if fn == "Fn::Join":
            delimiter, items = arg
            return self.resolve(delimiter).join(_cfn_str(i) for i in self.resolve(items))
        if fn == "Fn::Select":
            index, items = self.resolve(arg)
            return items[int(index)]
        if fn == "Fn::Split":
            delimiter, source = self.resolve(arg)
            return source.split(delimiter)
        if fn == "Fn::If":
            name, when_true, when_false = arg
            return self.resolve(when_true if self.condition(name) else when_false)
        if fn == "Fn::Equals":
            left, right = self.resolve(arg)
            return _cfn_str(left) == _cfn_str(right)
        if fn == "Fn::And":
            return all(self._truth(a) for a in arg)
        if fn == "Fn::Or":
            return any(self._truth(a) for a in arg)
        if fn == "Fn::Not":
            return not self._truth(arg[0])
        if fn == "Fn::FindInMap":
            map_name, top, second = (self.resolve(a) for a in arg[:3])
            return self.template["Mappings"][map_name][top][second]
        if fn == "Fn::Base64":
            return base64.b64encode(_cfn_str(self.resolve(arg)).encode()).decode()
        if fn == "Fn::GetAZs":
            return [f"{self.region}{zone}" for zone in "abc"]
        if fn == "Fn::ToJsonString":
            return json.dumps(self.resolve(arg), separators=(",", ":"))
        if fn == "Fn::Length":
            return len(self.resolve(arg))
        raise ProvisionError(f"intrinsic function {fn} is not supported by the local stack")

    def _truth(self, value: Any) -> bool:
        resolved = self.resolve(value)
        if isinstance(resolved, bool):
            return resolved
        return _cfn_str(resolved).lower() == "true"

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            conditions = self.template.get("Conditions") or {}
            if name not in conditions:
                raise ProvisionError(f"unknown condition {name!r}")
            self._conditions[name] = self._truth(conditions[name])
        return self._conditions[name]

    def _sub(self, arg: Any) -> str:
        if isinstance(arg, list):
            text, variables = arg[0], self.resolve(arg[1] if len(arg) > 1 else {})
        else:
            text, variables = arg, {}

        def replace(match: re.Match[str]) -> str:
            expression = match.group(1)
            if expression.startswith("!"):
                return "${" + expression[1:] + "}"
            expression = expression.strip()
            if expression in variables:
                return _cfn_str(variables[expression])
            if "." in expression and expression not in self.parameters:
                logical_id, attribute = expression.split(".", 1)
                return _cfn_str(self.get_att(logical_id, attribute))
            return _cfn_str(self._ref(expression))

        return _SUB_VARIABLE.sub(replace, text)

    def _ref(self, name: str) -> Any:
        pseudo: dict[str, Callable[[], Any]] = {
            "AWS::Region": lambda: self.region,
            "AWS::AccountId": lambda: self.account_id,
            "AWS::Partition": lambda: "aws",
            "AWS::URLSuffix": lambda: "amazonaws.com",
            "AWS::StackName": lambda: self.prefix,
            "AWS::StackId": lambda: f"arn:aws:cloudformation:{self.region}:{self.account_id}:stack/{self.prefix}/local",
            "AWS::NotificationARNs": lambda: [],
            "AWS::NoValue": lambda: _NO_VALUE,
        }
        if name in pseudo:
            return pseudo[name]()
        if name in self.parameters:
            value = self.parameters[name]
            if value is None:
                raise ProvisionError(f"parameter {name} has no Default; pass it in parameter_overrides")
            return value
        return self.get_att(name, "Ref")

    def get_att(self, logical_id: str, attribute: str) -> Any:
        attributes = self.ensure(logical_id)
        if attribute not in attributes or attributes[attribute] is None:
            resource_type = self.resources[logical_id].get("Type")
            raise ProvisionError(f"{logical_id} ({resource_type}) has no attribute {attribute!r} locally")
        return attributes[attribute]

    # ----------------------------------------------------------------- resources
    def ensure(self, logical_id: str) -> dict[str, Any]:
        """Create ``logical_id`` (and what it references) once; return its attributes."""
        if logical_id in self._attributes:
            return self._attributes[logical_id]
        resource = self.resources.get(logical_id)
        if resource is None:
            raise ProvisionError(f"unknown resource or parameter {logical_id!r}")
        if logical_id in self._in_progress:
            cycle = " -> ".join([*self._in_progress, logical_id])
            raise ProvisionError(f"circular reference: {cycle}")
        if "Condition" in resource and not self.condition(resource["Condition"]):
            raise ProvisionError(f"{logical_id} is disabled by condition {resource['Condition']}")
        resource_type = resource.get("Type", "")
        handler = _HANDLERS.get(resource_type)
        if handler is None:
            placeholder = physical_name(self.prefix, logical_id)
            log.warning("%s (%s) is not provisioned locally; using %r", logical_id, resource_type, placeholder)
            attributes: dict[str, Any] = {"Ref": placeholder, "Arn": placeholder, "Name": placeholder}
        else:
            self._in_progress.append(logical_id)
            try:
                attributes = handler(self, logical_id, resource.get("Properties") or {})
            finally:
                self._in_progress.pop()
            log.info("provisioned %s (%s): %s", logical_id, resource_type, attributes["Ref"])
        self._attributes[logical_id] = attributes
        return attributes

    def provision_all(self) -> None:
        for logical_id, resource in self.resources.items():
            if resource.get("Type") not in SUPPORTED_TYPES:
                continue
            if "Condition" in resource and not self.condition(resource["Condition"]):
                continue
            self.ensure(logical_id)

    def environment(self) -> dict[str, str]:
        function_globals = (self.template.get("Globals") or {}).get("Function") or {}
        variables = (function_globals.get("Environment") or {}).get("Variables") or {}
        env: dict[str, str] = {}
        for name, raw in variables.items():
            value = self.resolve(raw)
            if value is _NO_VALUE or value is None:
                continue
            if isinstance(value, list):
                value = ",".join(_cfn_str(v) for v in value)
            elif isinstance(value, dict):
                raise ProvisionError(f"environment variable {name} did not resolve to a scalar: {value!r}")
            env[name] = _cfn_str(value)
        if ENDPOINT_VARIABLE in env:
            # Empty in AWS (boto3 ignores it); sam local and the local stack point it at moto.
            env[ENDPOINT_VARIABLE] = self.endpoint_url or ""
        return env


# --------------------------------------------------------------------------- handlers


def _dynamodb_table(stack: _LocalStack, logical_id: str, props: Mapping[str, Any]) -> dict[str, Any]:
    ddb = stack.client("dynamodb")
    name = physical_name(stack.prefix, logical_id, TABLE)
    billing = stack.resolve(props.get("BillingMode")) or "PROVISIONED"
    provisioned = billing == "PROVISIONED"
    default_throughput = {"ReadCapacityUnits": 5, "WriteCapacityUnits": 5}

    def index(spec: Mapping[str, Any]) -> dict[str, Any]:
        out = {k: spec[k] for k in ("IndexName", "KeySchema", "Projection") if k in spec}
        if provisioned:
            out["ProvisionedThroughput"] = spec.get("ProvisionedThroughput") or default_throughput
        return out

    request: dict[str, Any] = {
        "TableName": name,
        "KeySchema": stack.resolve(props["KeySchema"]),
        "AttributeDefinitions": stack.resolve(props["AttributeDefinitions"]),
        "BillingMode": billing,
    }
    if provisioned:
        request["ProvisionedThroughput"] = stack.resolve(props.get("ProvisionedThroughput")) or default_throughput
    gsis = [index(g) for g in stack.resolve(props.get("GlobalSecondaryIndexes")) or []]
    if gsis:
        request["GlobalSecondaryIndexes"] = gsis
    lsis = [
        {k: lsi[k] for k in ("IndexName", "KeySchema", "Projection") if k in lsi}
        for lsi in stack.resolve(props.get("LocalSecondaryIndexes")) or []
    ]
    if lsis:
        request["LocalSecondaryIndexes"] = lsis
    sse = stack.resolve(props.get("SSESpecification"))
    if sse:
        request["SSESpecification"] = _drop_none(
            {
                "Enabled": bool(sse.get("SSEEnabled")),
                "SSEType": sse.get("SSEType"),
                "KMSMasterKeyId": sse.get("KMSMasterKeyId"),
            }
        )
    stream = stack.resolve(props.get("StreamSpecification"))
    if stream:
        request["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": stream["StreamViewType"]}
    table_class = stack.resolve(props.get("TableClass"))
    if table_class:
        request["TableClass"] = table_class

    try:
        description = ddb.create_table(**request)["TableDescription"]
        ddb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    except ClientError as exc:
        if _error_code(exc) != "ResourceInUseException":
            raise
        description = ddb.describe_table(TableName=name)["Table"]
        _reconcile_table(ddb, logical_id, description, request)

    ttl = stack.resolve(props.get("TimeToLiveSpecification"))
    if ttl and ttl.get("Enabled") in (True, "true", "True"):
        current = ddb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
        if current.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING") or (
            current.get("AttributeName") != ttl["AttributeName"]
        ):
            ddb.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl["AttributeName"]},
            )
    pitr = stack.resolve(props.get("PointInTimeRecoverySpecification")) or {}
    if pitr.get("PointInTimeRecoveryEnabled") in (True, "true", "True"):
        ddb.update_continuous_backups(
            TableName=name, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True}
        )
    return {
        "Ref": name,
        "Arn": description["TableArn"],
        "StreamArn": description.get("LatestStreamArn"),
    }


def _reconcile_table(ddb: Any, logical_id: str, existing: Mapping[str, Any], wanted: Mapping[str, Any]) -> None:
    """An existing table must have the template's keys; missing GSIs are added."""

    def keys(schema: Any) -> list[tuple[str, str]]:
        return sorted((k["AttributeName"], k["KeyType"]) for k in schema or [])

    if keys(existing.get("KeySchema")) != keys(wanted["KeySchema"]):
        raise ProvisionError(
            f"local table {wanted['TableName']} ({logical_id}) exists with another key schema; "
            "reset the local stack (restart moto) and provision again"
        )
    present = {g["IndexName"]: g for g in existing.get("GlobalSecondaryIndexes") or []}
    for gsi in wanted.get("GlobalSecondaryIndexes", []):
        have = present.get(gsi["IndexName"])
        if have is None:
            ddb.update_table(
                TableName=wanted["TableName"],
                AttributeDefinitions=wanted["AttributeDefinitions"],
                GlobalSecondaryIndexUpdates=[{"Create": gsi}],
            )
        elif keys(have.get("KeySchema")) != keys(gsi["KeySchema"]):
            raise ProvisionError(
                f"index {gsi['IndexName']} of local table {wanted['TableName']} has another key schema; "
                "reset the local stack and provision again"
            )


def _s3_bucket(stack: _LocalStack, logical_id: str, props: Mapping[str, Any]) -> dict[str, Any]:
    s3 = stack.client("s3")
    name = physical_name(stack.prefix, logical_id, BUCKET)
    create: dict[str, Any] = {"Bucket": name}
    if stack.region != "us-east-1":
        create["CreateBucketConfiguration"] = {"LocationConstraint": stack.region}
    try:
        s3.create_bucket(**create)
    except ClientError as exc:
        if _error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
        s3.head_bucket(Bucket=name)

    ownership = stack.resolve(props.get("OwnershipControls"))
    if ownership:
        s3.put_bucket_ownership_controls(Bucket=name, OwnershipControls={"Rules": ownership["Rules"]})
    public_access = stack.resolve(props.get("PublicAccessBlockConfiguration"))
    if public_access:
        s3.put_public_access_block(
            Bucket=name,
            PublicAccessBlockConfiguration={
                key: public_access.get(key, False) in (True, "true", "True")
                for key in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")
            },
        )
    encryption = stack.resolve(props.get("BucketEncryption"))
    if encryption:
        rules = []
        for rule in encryption.get("ServerSideEncryptionConfiguration", []):
            out: dict[str, Any] = {}
            if "ServerSideEncryptionByDefault" in rule:
                out["ApplyServerSideEncryptionByDefault"] = rule["ServerSideEncryptionByDefault"]
            if "BucketKeyEnabled" in rule:
                out["BucketKeyEnabled"] = rule["BucketKeyEnabled"] in (True, "true", "True")
            rules.append(out)
        s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": rules})
    versioning = stack.resolve(props.get("VersioningConfiguration"))
    if versioning:
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": versioning["Status"]})
    cors = stack.resolve(props.get("CorsConfiguration"))
    if cors:
        s3.put_bucket_cors(
            Bucket=name,
            CORSConfiguration={
                "CORSRules": [
                    _drop_none(
                        {
                            "ID": rule.get("Id"),
                            "AllowedOrigins": rule["AllowedOrigins"],
                            "AllowedMethods": rule["AllowedMethods"],
                            "AllowedHeaders": rule.get("AllowedHeaders"),
                            "ExposeHeaders": rule.get("ExposedHeaders"),
                            "MaxAgeSeconds": rule.get("MaxAge"),
                        }
                    )
                    for rule in cors["CorsRules"]
                ]
            },
        )
    return {
        "Ref": name,
        "Arn": f"arn:aws:s3:::{name}",
        "DomainName": f"{name}.s3.amazonaws.com",
        "RegionalDomainName": f"{name}.s3.{stack.region}.amazonaws.com",
    }


_QUEUE_ATTRIBUTES = (
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "DelaySeconds",
    "FifoQueue",
    "FifoThroughputLimit",
    "KmsDataKeyReusePeriodSeconds",
    "KmsMasterKeyId",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "RedriveAllowPolicy",
    "RedrivePolicy",
    "SqsManagedSseEnabled",
    "VisibilityTimeout",
)


def _sqs_queue(stack: _LocalStack, logical_id: str, props: Mapping[str, Any]) -> dict[str, Any]:
    sqs = stack.client("sqs")
    attributes: dict[str, str] = {}
    for key in _QUEUE_ATTRIBUTES:
        if key not in props:
            continue
        value = stack.resolve(props[key])
        attributes[key] = json.dumps(value) if isinstance(value, dict) else _cfn_str(value)
    name = physical_name(stack.prefix, logical_id, QUEUE)
    if attributes.get("FifoQueue") == "true":
        name += ".fifo"
    try:
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    except ClientError as exc:
        if "QueueAlreadyExists" not in _error_code(exc) and "QueueNameExists" not in _error_code(exc):
            raise
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        mutable = {k: v for k, v in attributes.items() if k != "FifoQueue"}
        if mutable:
            sqs.set_queue_attributes(QueueUrl=url, Attributes=mutable)
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return {"Ref": url, "QueueUrl": url, "Arn": arn, "QueueName": name}


def _kms_key(stack: _LocalStack, logical_id: str, props: Mapping[str, Any]) -> dict[str, Any]:
    kms = stack.client("kms")
    marker_alias = "alias/" + physical_name(stack.prefix, logical_id, KEY)
    try:
        metadata = kms.describe_key(KeyId=marker_alias)["KeyMetadata"]
    except ClientError as exc:
        if _error_code(exc) != "NotFoundException":
            raise
        create: dict[str, Any] = {
            "Description": stack.resolve(props.get("Description")) or f"{stack.prefix} {logical_id}",
            "KeyUsage": stack.resolve(props.get("KeyUsage")) or "ENCRYPT_DECRYPT",
            "KeySpec": stack.resolve(props.get("KeySpec")) or "SYMMETRIC_DEFAULT",
            "Tags": [{"TagKey": _KEY_MARKER_TAG, "TagValue": f"{stack.prefix}/{logical_id}"}],
        }
        metadata = kms.create_key(**create)["KeyMetadata"]
        kms.create_alias(AliasName=marker_alias, TargetKeyId=metadata["KeyId"])
    key_id = metadata["KeyId"]
    if (
        stack.resolve(props.get("EnableKeyRotation")) in (True, "true", "True")
        and metadata.get("KeySpec", "SYMMETRIC_DEFAULT") == "SYMMETRIC_DEFAULT"
    ):
        kms.enable_key_rotation(KeyId=key_id)
    return {"Ref": key_id, "KeyId": key_id, "Arn": metadata["Arn"]}


def _kms_alias(stack: _LocalStack, logical_id: str, props: Mapping[str, Any]) -> dict[str, Any]:
    kms = stack.client("kms")
    alias = stack.resolve(props["AliasName"])
    target = stack.resolve(props["TargetKeyId"])
    try:
        kms.create_alias(AliasName=alias, TargetKeyId=target)
    except ClientError as exc:
        if _error_code(exc) != "AlreadyExistsException":
            raise
        kms.update_alias(AliasName=alias, TargetKeyId=target)
    return {"Ref": alias}


def _event_bus(stack: _LocalStack, logical_id: str, props: Mapping[str, Any]) -> dict[str, Any]:
    events = stack.client("events")
    name = physical_name(stack.prefix, logical_id, EVENT_BUS)
    try:
        arn = events.create_event_bus(Name=name)["EventBusArn"]
    except ClientError as exc:
        if _error_code(exc) != "ResourceAlreadyExistsException":
            raise
        arn = events.describe_event_bus(Name=name)["Arn"]
    return {"Ref": name, "Name": name, "Arn": arn}


_HANDLERS: dict[str, Callable[[_LocalStack, str, Mapping[str, Any]], dict[str, Any]]] = {
    TABLE: _dynamodb_table,
    BUCKET: _s3_bucket,
    QUEUE: _sqs_queue,
    KEY: _kms_key,
    ALIAS: _kms_alias,
    EVENT_BUS: _event_bus,
}


# --------------------------------------------------------------------------- public API


def provision(
    template: Mapping[str, Any],
    *,
    session: boto3.session.Session | None = None,
    endpoint_url: str | None,
    prefix: str = "mailsync-local",
    parameter_overrides: Mapping[str, Any] | None = None,
    clients: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Create the template's tables, buckets, queues, KMS keys/aliases and event buses.

    ``endpoint_url`` is the moto server (``http://127.0.0.1:5000``), or ``None`` to use
    the default endpoints (inside ``moto.mock_aws()``).  Parameters take their
    ``Default`` unless given in ``parameter_overrides``.  Returns
    ``Globals.Function.Environment.Variables`` resolved against what was created.
    ``clients``: boto3 clients by service name to use and add to (made from ``session``).
    """
    stack = _LocalStack(
        template,
        session or boto3.session.Session(),
        endpoint_url,
        prefix,
        parameter_overrides,
        clients,
    )
    stack.provision_all()
    return stack.environment()


def provision_mock(
    template_path: Path | None = None,
    *,
    prefix: str = "mailsync-local",
    parameter_overrides: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """``provision`` for code already running inside ``moto.mock_aws()`` (default endpoints).

    The tests provision a stack per test. Its clients are kept between calls, per endpoint and
    region: building them is over half of a stack's provisioning CPU, and moto's mock intercepts
    requests as they are sent, so a client serves every ``mock_aws`` context."""
    template = load_template(template_path or DEFAULT_TEMPLATE)
    session = boto3.session.Session()
    clients = _MOCK_CLIENTS.setdefault((os.environ.get("AWS_ENDPOINT_URL"), session.region_name), {})
    return provision(
        template,
        session=session,
        endpoint_url=None,
        prefix=prefix,
        parameter_overrides=parameter_overrides,
        clients=clients,
    )


_MOCK_CLIENTS: dict[tuple[str | None, str | None], dict[str, Any]] = {}


if __name__ == "__main__":  # pragma: no cover - manual use: python -m devstack.provision URL
    import argparse

    parser = argparse.ArgumentParser(description="Provision template.yaml into a moto server")
    parser.add_argument("endpoint_url", help="e.g. http://127.0.0.1:5000")
    parser.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE)
    parser.add_argument("--prefix", default="mailsync-local")
    cli = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    resolved = provision(load_template(cli.template), endpoint_url=cli.endpoint_url, prefix=cli.prefix)
    for variable, resolved_value in sorted(resolved.items()):
        print(f"{variable}={resolved_value}")
