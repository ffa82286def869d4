"""A registry token server for the OCI test (the Docker token protocol):
makes a self-signed RSA certificate (written to argv[2], for the
registry's rootcertbundle), then answers GET /token with a JWT signed by
it (RS256, the certificate in x5c) when the Basic credentials are
user/secret, and 401 otherwise. Prints its port on stdout."""

import base64, datetime, http.server, json, os, sys, time, urllib.parse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

ISSUER, SERVICE, USER, SECRET = "vws-test-issuer", "vws-test", "user", "secret"

key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vws test token signer")])
now = datetime.datetime.now(datetime.timezone.utc)
cert = (
    x509.CertificateBuilder()
    .subject_name(name)
    .issuer_name(name)
    .public_key(key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(now - datetime.timedelta(minutes=5))
    .not_valid_after(now + datetime.timedelta(days=1))
    .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    .sign(key, hashes.SHA256())
)
with open(sys.argv[2], "wb") as f:
    f.write(cert.public_bytes(serialization.Encoding.PEM))
der = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(scopes):
    access = []
    for scope in scopes:
        kind, repo, actions = scope.split(":")
        access.append({"type": kind, "name": repo, "actions": actions.split(",")})
    t = int(time.time())
    claims = {"iss": ISSUER, "sub": USER, "aud": SERVICE, "exp": t + 300, "nbf": t - 10,
              "iat": t, "jti": os.urandom(8).hex(), "access": access}
    header = {"alg": "RS256", "typ": "JWT", "x5c": [der]}
    signing = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    sig = key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
    return signing + "." + b64url(sig)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        query = urllib.parse.parse_qs(url.query)
        auth = self.headers.get("Authorization", "")
        good = "Basic " + base64.b64encode(f"{USER}:{SECRET}".encode()).decode()
        if url.path != "/token" or auth != good:
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"errors":[{"code":"UNAUTHORIZED","message":"wrong credentials"}]}')
            return
        body = json.dumps({"token": token(query.get("scope", [])), "expires_in": 300}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
print(server.server_port, flush=True)
server.serve_forever()
