"""The EC2 front-end driven by its real clients, awscli and boto3, and its
answers' shapes compared with a reference implementation of the EC2 API
(moto in server mode, started here) running the same script.

Environment: ENDPOINT, CA, REGION, IMAGE (an image id), TYPE; the owner's
key (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), another user's (BOB_KEY,
BOB_SECRET) and a revoked one (REVOKED_KEY, REVOKED_SECRET); WORK (a
scratch folder). Prints each step; exits non-zero at the first failure.
"""

import base64
import datetime
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import types
import urllib.error
import urllib.parse
import urllib.request

import boto3
import botocore.auth
import botocore.awsrequest
import botocore.credentials
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = os.environ["ENDPOINT"]
CA = os.environ["CA"]
REGION = os.environ["REGION"]
IMAGE = os.environ["IMAGE"]
TYPE = os.environ["TYPE"]
WORK = os.environ["WORK"]
AWS = os.path.join(os.path.dirname(sys.executable), "aws")
FAST = {"Delay": 1, "MaxAttempts": 180}
# Names of this run (a rerun on the same home sees the last run's
# terminated instances, still listed for an hour, as EC2 does).
RUN = f"{int(time.time() * 1000) % 10**9}"


def step(what):
    print(f"== {what}", flush=True)


def client(endpoint, key, secret, region, verify):
    return boto3.client(
        "ec2",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        verify=verify,
        config=Config(retries={"max_attempts": 1}, read_timeout=300),
    )


def code_of(fn, **kw):
    try:
        fn(**kw)
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError(f"{fn.__name__} {kw} succeeded")


def public_key():
    path = os.path.join(WORK, "imported")
    if not os.path.exists(path + ".pub"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True)
    with open(path + ".pub", "rb") as f:
        return f.read()


# ---- the same script against vws and against moto ---------------------


def scenario(c, image, itype, suffix):
    """What a user does, start to end; returns (call, answer) pairs."""
    calls = []

    def call(name, op, **kw):
        answer = getattr(c, op)(**kw)
        answer.pop("ResponseMetadata", None)
        calls.append((name, answer))
        return answer

    call("describe_regions", "describe_regions")
    call("describe_availability_zones", "describe_availability_zones")
    call("describe_instance_types", "describe_instance_types", InstanceTypes=[itype])
    key = call("create_key_pair", "create_key_pair", KeyName=f"made-{suffix}", KeyType="ed25519")
    assert key["KeyMaterial"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----") or suffix == "moto", key
    call("import_key_pair", "import_key_pair", KeyName=f"imported-{suffix}", PublicKeyMaterial=public_key())
    pairs = call("describe_key_pairs", "describe_key_pairs", KeyNames=[f"made-{suffix}", f"imported-{suffix}"])
    assert sorted(k["KeyName"] for k in pairs["KeyPairs"]) == [f"imported-{suffix}", f"made-{suffix}"], pairs
    launch = dict(
        ImageId=image,
        InstanceType=itype,
        MinCount=1,
        MaxCount=1,
        KeyName=f"made-{suffix}",
        UserData="#cloud-config\nruncmd: [echo hi]\n",
        ClientToken=f"token-{suffix}",
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": f"web-{suffix}"}]}],
    )
    run = call("run_instances", "run_instances", **launch)
    iid = run["Instances"][0]["InstanceId"]
    if suffix != "moto":  # moto does not keep ClientToken's promise
        again = c.run_instances(**launch)
        assert again["Instances"][0]["InstanceId"] == iid, "ClientToken: a retried launch made another instance"
    c.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig=FAST)
    by_id = call("describe_instances_by_id", "describe_instances", InstanceIds=[iid])
    inst = by_id["Reservations"][0]["Instances"][0]
    assert inst["State"] == {"Code": 16, "Name": "running"}, inst["State"]
    assert inst["KeyName"] == f"made-{suffix}" and inst["InstanceType"] == itype, inst
    running = call(
        "describe_instances_by_state",
        "describe_instances",
        Filters=[{"Name": "instance-state-name", "Values": ["running"]}],
    )
    assert iid in [i["InstanceId"] for r in running["Reservations"] for i in r["Instances"]]
    tagged = call(
        "describe_instances_by_tag",
        "describe_instances",
        Filters=[{"Name": "tag:Name", "Values": [f"web-{suffix}"]}],
    )
    assert [i["InstanceId"] for r in tagged["Reservations"] for i in r["Instances"]] == [iid], tagged
    none = c.describe_instances(Filters=[{"Name": "tag:Name", "Values": ["nobody"]}])
    assert none["Reservations"] == [], none
    call("create_tags", "create_tags", Resources=[iid], Tags=[{"Key": "team", "Value": "bio"}])
    tags = call("describe_tags", "describe_tags", Filters=[{"Name": "resource-id", "Values": [iid]}])
    assert {(t["Key"], t["Value"]) for t in tags["Tags"]} == {("Name", f"web-{suffix}"), ("team", "bio")}, tags
    stop = call("stop_instances", "stop_instances", InstanceIds=[iid])
    assert stop["StoppingInstances"][0]["PreviousState"]["Name"] == "running", stop
    c.get_waiter("instance_stopped").wait(InstanceIds=[iid], WaiterConfig=FAST)
    call("start_instances", "start_instances", InstanceIds=[iid])
    c.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig=FAST)
    call("reboot_instances", "reboot_instances", InstanceIds=[iid])
    c.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig=FAST)
    image_made = call("create_image", "create_image", InstanceId=iid, Name=f"img-{suffix}")
    ami = image_made["ImageId"]
    c.get_waiter("image_available").wait(ImageIds=[ami], WaiterConfig=FAST)
    call("describe_images", "describe_images", ImageIds=[ami])
    call("terminate_instances", "terminate_instances", InstanceIds=[iid])
    c.get_waiter("instance_terminated").wait(InstanceIds=[iid], WaiterConfig=FAST)
    gone = call("describe_instances_terminated", "describe_instances", InstanceIds=[iid])
    assert gone["Reservations"][0]["Instances"][0]["State"]["Name"] == "terminated", gone
    call("deregister_image", "deregister_image", ImageId=ami)
    call("delete_key_pair", "delete_key_pair", KeyName=f"made-{suffix}")
    c.delete_key_pair(KeyName=f"imported-{suffix}")
    left = c.describe_key_pairs()["KeyPairs"]
    assert not [k for k in left if k["KeyName"].endswith(suffix)], left
    return calls


def shape(value, path=""):
    """The key paths of an answer (list items merged), with each leaf's type."""
    out = set()
    if isinstance(value, dict):
        for k, v in value.items():
            out |= shape(v, f"{path}.{k}")
    elif isinstance(value, list):
        for v in value:
            out |= shape(v, f"{path}[]")
        if not value:
            out.add((f"{path}[]", "empty"))
    else:
        kind = type(value).__name__
        if isinstance(value, datetime.datetime):
            kind = "datetime"
        out.add((path, kind))
    return out


# What vws answers and moto does not, though EC2 does.
VWS_ONLY = [
    ".Images[].PlatformDetails",
    ".Images[].UsageOperation",
    ".KeyPairs[].KeyType",
    ".AvailabilityZones[].GroupName",
    ".AvailabilityZones[].NetworkBorderGroup",
    ".AvailabilityZones[].OptInStatus",
]
# What moto answers and vws does not: what vws has no such thing for (VPCs,
# subnets, public addresses, EBS, elastic network hardware, PV kernels,
# Windows), and a terminated instance's address (released with it).
MOTO_ONLY = [
    "Instances[].VpcId",
    "Instances[].SubnetId",
    "Instances[].PublicIpAddress",
    "Instances[].KernelId",
    "Instances[].Platform",
    "Instances[].StateReason.",
    "Instances[].NetworkInterfaces[].VpcId",
    "Instances[].NetworkInterfaces[].SubnetId",
    "Instances[].NetworkInterfaces[].Association.",
    "Instances[].NetworkInterfaces[].PrivateIpAddresses[].Association.",
    "Instances[].NetworkInterfaces[].Groups[].",
    ".InstanceTypes[].EbsInfo.",
    ".InstanceTypes[].NetworkInfo.",
    ".InstanceTypes[].InstanceStorageInfo.",
    ".InstanceTypes[].PlacementGroupInfo.",
    ".InstanceTypes[].ProcessorInfo.SustainedClockSpeedInGhz",
    ".Images[].ImageOwnerAlias",
    ".Images[].KernelId",
    ".Images[].RamdiskId",
    ".Images[].Platform",
]
TERMINATED_MOTO_ONLY = ["Instances[].PrivateIpAddress", "Instances[].NetworkInterfaces[]."]


def known(path, allowed):
    return any(a in path for a in allowed)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def against_moto(vws_calls):
    step("the same script against moto (the reference), and the shapes compared")
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        m = client(f"http://127.0.0.1:{port}", "testing", "testing", "us-east-1", False)
        image = m.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        moto_calls = scenario(m, image, "t2.micro", "moto")
    finally:
        server.stop()
    # Leaves one side has and the other lacks, past the documented
    # differences (docs/ec2.md); empty lists on one side stand for any items
    # on the other.
    report = {}
    assert [n for n, _ in vws_calls] == [n for n, _ in moto_calls]
    for (name, ours), (_, theirs) in zip(vws_calls, moto_calls):
        a, b = shape(ours), shape(theirs)
        if name == "describe_instances_terminated":
            b = {(p, k) for p, k in b if not known(p, TERMINATED_MOTO_ONLY)}
        prefixes = lambda s: {p for p, k in s if k == "empty"}
        covered = lambda p, empties: any(p.startswith(e) for e in empties)
        only_vws = sorted(
            p for p, k in a - b if k != "empty" and not covered(p, prefixes(b)) and not known(p, VWS_ONLY)
        )
        only_moto = sorted(
            p for p, k in b - a if k != "empty" and not covered(p, prefixes(a)) and not known(p, MOTO_ONLY)
        )
        if only_vws or only_moto:
            report[name] = {"only_vws": only_vws, "only_moto": only_moto}
    print(json.dumps(report, indent=1))
    with open(os.path.join(WORK, "shapes.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report


# ---- errors ------------------------------------------------------------


def errors(c, bob, revoked, image, itype):
    step("errors: an unknown instance, a bad signature, an expired request, a revoked key")
    assert code_of(c.describe_instances, InstanceIds=["i-000000000000"]) == ("InvalidInstanceID.NotFound", 400)
    assert code_of(c.describe_instances, InstanceIds=["i-nothex"]) == ("InvalidInstanceID.Malformed", 400)
    assert code_of(c.describe_images, ImageIds=["ami-00000000000000000"]) == ("InvalidAMIID.NotFound", 400)
    assert code_of(c.run_instances, ImageId=image, InstanceType="m9.huge", MinCount=1, MaxCount=1)[0] == "InvalidParameterValue"
    assert code_of(c.run_instances, ImageId=image, InstanceType=itype, MinCount=1, MaxCount=1, KeyName="nokey") == ("InvalidKeyPair.NotFound", 400)
    bad = client(ENDPOINT, os.environ["AWS_ACCESS_KEY_ID"], "x" * 40, REGION, CA)
    assert code_of(bad.describe_instances) == ("AuthFailure", 401)
    unknown = client(ENDPOINT, "AKIAAAAAAAAAAAAAAAAA", "x" * 40, REGION, CA)
    assert code_of(unknown.describe_instances) == ("AuthFailure", 401)
    assert code_of(revoked.describe_instances) == ("AuthFailure", 401)
    wrong_region = client(ENDPOINT, os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"], "us-east-1", CA)
    assert code_of(wrong_region.describe_instances) == ("AuthFailure", 401)

    class Skewed(datetime.datetime):
        @classmethod
        def utcnow(cls):
            return datetime.datetime.utcnow() - datetime.timedelta(minutes=10)

    real = botocore.auth.datetime
    botocore.auth.datetime = types.SimpleNamespace(datetime=Skewed, timedelta=datetime.timedelta, timezone=datetime.timezone)
    try:
        assert code_of(c.describe_instances) == ("RequestExpired", 400)
    finally:
        botocore.auth.datetime = real

    step("errors: an unknown action, in EC2's error document")
    creds = botocore.credentials.Credentials(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
    body = "Action=LaunchRockets&Version=2016-11-15&Ignored=1"
    req = botocore.awsrequest.AWSRequest(
        method="POST", url=ENDPOINT + "/", data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    botocore.auth.SigV4Auth(creds, "ec2", REGION).add_auth(req)
    prepared = req.prepare()
    ctx = ssl.create_default_context(cafile=CA)
    try:
        urllib.request.urlopen(urllib.request.Request(ENDPOINT + "/", data=body.encode(), headers=dict(prepared.headers), method="POST"), context=ctx)
        raise AssertionError("an unknown action succeeded")
    except urllib.error.HTTPError as e:
        text = e.read().decode()
        assert e.code == 400, e.code
        assert "<Response><Errors><Error><Code>InvalidAction</Code>" in text and "<RequestID>" in text, text

    step("another owner's instance is not found")
    run = c.run_instances(ImageId=image, InstanceType=itype, MinCount=1, MaxCount=1)
    iid = run["Instances"][0]["InstanceId"]
    assert code_of(bob.describe_instances, InstanceIds=[iid]) == ("InvalidInstanceID.NotFound", 400)
    assert code_of(bob.terminate_instances, InstanceIds=[iid]) == ("InvalidInstanceID.NotFound", 400)
    assert code_of(bob.stop_instances, InstanceIds=[iid]) == ("InvalidInstanceID.NotFound", 400)
    mine = [i["InstanceId"] for r in bob.describe_instances()["Reservations"] for i in r["Instances"]]
    assert iid not in mine, mine
    assert code_of(bob.create_tags, Resources=[iid], Tags=[{"Key": "x", "Value": "y"}]) == ("InvalidInstanceID.NotFound", 400)
    c.terminate_instances(InstanceIds=[iid])


# ---- awscli ------------------------------------------------------------


def aws(*args):
    out = subprocess.run(
        [AWS, "--endpoint-url", ENDPOINT, "--region", REGION, "--ca-bundle", CA, "--output", "json", "ec2", *args],
        capture_output=True, text=True,
    )
    if out.returncode != 0:
        raise AssertionError(f"aws ec2 {' '.join(args)}: {out.stderr}")
    return json.loads(out.stdout) if out.stdout.strip() else None


def with_awscli():
    step("awscli: key pairs")
    made = aws("create-key-pair", "--key-name", f"cli-made-{RUN}", "--key-type", "ed25519")
    assert made["KeyMaterial"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    public_key()
    aws("import-key-pair", "--key-name", f"cli-imported-{RUN}", "--public-key-material", f"fileb://{WORK}/imported.pub")
    names = [k["KeyName"] for k in aws("describe-key-pairs")["KeyPairs"]]
    assert {f"cli-made-{RUN}", f"cli-imported-{RUN}"} <= set(names), names
    aws("delete-key-pair", "--key-name", f"cli-imported-{RUN}")
    step("awscli: run-instances, wait instance-running")
    run = aws(
        "run-instances", "--image-id", IMAGE, "--instance-type", TYPE, "--count", "1",
        "--key-name", f"cli-made-{RUN}",
        "--tag-specifications", f"ResourceType=instance,Tags=[{{Key=Name,Value=cli-{RUN}}}]",
    )
    iid = run["Instances"][0]["InstanceId"]
    aws("wait", "instance-running", "--instance-ids", iid)
    step("awscli: describe by id, by filter, by tag")
    ids = lambda d: [i["InstanceId"] for r in d["Reservations"] for i in r["Instances"]]
    assert ids(aws("describe-instances", "--instance-ids", iid)) == [iid]
    assert iid in ids(aws("describe-instances", "--filters", "Name=instance-state-name,Values=running"))
    assert ids(aws("describe-instances", "--filters", f"Name=tag:Name,Values=cli-{RUN}")) == [iid]
    step("awscli: stop, wait instance-stopped, start, wait instance-running")
    aws("stop-instances", "--instance-ids", iid)
    aws("wait", "instance-stopped", "--instance-ids", iid)
    aws("start-instances", "--instance-ids", iid)
    aws("wait", "instance-running", "--instance-ids", iid)
    step("awscli: create-image, wait image-available")
    ami = aws("create-image", "--instance-id", iid, "--name", f"cli-img-{RUN}")["ImageId"]
    aws("wait", "image-available", "--image-ids", ami)
    described = aws("describe-images", "--image-ids", ami)["Images"][0]
    assert described["Name"] == f"cli-img-{RUN}:latest", described
    step("awscli: terminate, wait instance-terminated")
    aws("terminate-instances", "--instance-ids", iid)
    aws("wait", "instance-terminated", "--instance-ids", iid)
    assert aws("describe-instances", "--instance-ids", iid)["Reservations"][0]["Instances"][0]["State"]["Name"] == "terminated"
    aws("deregister-image", "--image-id", ami)
    aws("delete-key-pair", "--key-name", f"cli-made-{RUN}")


def main():
    with_awscli()
    step("boto3: the whole script")
    c = client(ENDPOINT, os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"], REGION, CA)
    calls = scenario(c, IMAGE, TYPE, f"vws-{RUN}")
    bob = client(ENDPOINT, os.environ["BOB_KEY"], os.environ["BOB_SECRET"], REGION, CA)
    revoked = client(ENDPOINT, os.environ["REVOKED_KEY"], os.environ["REVOKED_SECRET"], REGION, CA)
    errors(c, bob, revoked, IMAGE, TYPE)
    report = against_moto(calls)
    if report:
        raise AssertionError(f"answers differ in shape from moto's: {json.dumps(report)}")
    step("done")


if __name__ == "__main__":
    main()
