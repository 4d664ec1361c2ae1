//! PEM keys of the auth tests: ES256 and RS256 pairs, the same P-256 key in SEC1 form,
//! and keys `rollcall token` must explain it cannot use.

/// A P-256 private key (PKCS#8), for ES256.
pub const EC_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgYF6IZsI6n2qE7je9\n\
C76Nk7radjfHQE7EA/P9yVzY6A2hRANCAAQHRAcOQ4+m/1at/PgcWJQuW1gtQVgK\n\
doHZPn3zXvqq586QtTuTAHidTlgj8Vc0hBxq40K8SgCfscmzn6vWcS6q\n\
-----END PRIVATE KEY-----\n\
";

/// The public half of [`EC_PRIVATE`].
pub const EC_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEB0QHDkOPpv9Wrfz4HFiULltYLUFY\n\
CnaB2T598176qufOkLU7kwB4nU5YI/FXNIQcauNCvEoAn7HJs5+r1nEuqg==\n\
-----END PUBLIC KEY-----\n\
";

/// Another P-256 private key (PKCS#8): signs tokens a server with [`EC_PUBLIC`] refuses.
pub const OTHER_EC_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgTvIWh0ywGCh+E176\n\
jQIKntiHF8SGtWVRa/mYSckwFoihRANCAARb93GKsCFLkm1vmFJGUSZyyRv0a0HH\n\
cPQypFX3Q1OIQktvx0epRBWdKfiz2PwzYHTdF4XbKLsrsJuFaDTwbVqD\n\
-----END PRIVATE KEY-----\n\
";

/// An RSA private key (PKCS#8), for RS256.
pub const RSA_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEugIBADANBgkqhkiG9w0BAQEFAASCBKQwggSgAgEAAoIBAQCljI4Qx4j4yLFP\n\
/dIK753b4DuO1lknYlF/1a65chZVKE06ZsR+rSYNrzmwWepwGAvt0yjhYplOA9SL\n\
YRKDdXerur9jKkg+Z/lVMPTBmga8BlkKFYpZKaqY/jKWjC6FJscOU2lZiiidXPGs\n\
LBle+RXDlys35L2keMvznjeIgwFsIwXReXAmIhxtcbsz9Is1d3DxGSuKxLY7y1oU\n\
KisVUze9wtlDvr/TsIj7TKKInlcfSMucUpmrUljBeMWIE4xdTsszF+PdB52+sQD0\n\
sTlDgimTBR8MirGPMn5owaxvcjK1I255dXV/F2Wml7bfVT3dxKLXCMTc2yQGicGB\n\
yn+1PHjZAgMBAAECgf8fJdLqVUtFg9KDZROf+yA4aSLLkojeYCFKwWmeeq4OV7GF\n\
diXXr7xOgX7ZL2cXWsQ5Jaxgu6xx1pv8SByznzu6PpNulQYCt+KxpK8TE2fbo1Yd\n\
ZPAi1oltP7vvl3B+nPfW5NrC02Z7ioFDY7NiVdCX0a7QAA8DuGFR9PLTPH2IBWwa\n\
nvDgCQT7CBPeOW43gPvw+v3+HXFxZZmDTFOActdw/+yDH7XF62Wjel0TMvGuXUZ0\n\
Z4DvqJoxGHy2qT9ahHEGJafbUKGR2xnlA97lYEETHHfDluTzbNRH6lmpQd4eXo+w\n\
wUZ0HmpMtzIiiKxHKsOIDrGGdNVUAmKHU16OSV8CgYEAz1bcUP3J4/hWstBfX2MR\n\
XG+7UOq6lqErIVPdUFQaFCEQUFrgR7yfs+9M2KyTqZTa7rcwXJh2YPjcumDf7emi\n\
z5MxRVQ7/4tgTJszN3eWz80fHElF/dO//kpKv6vWt6sXlnFuDEg7EIGpHNyVbope\n\
moCfR0JRjpWRJdAQevQD4n8CgYEAzGblhQwgFrZieWu4yc80StTSP8A+ulAunHEe\n\
wwP4a/KUP1LpsHGdqHKIMTfVbYN5nE56J8az5tzRIIqCqeOl/EpkVeCll7oHKNTj\n\
WfbmH5JZ05ePJ486+ibof2bpR2+KcdhJJMiygsEGitxS/YCKIPiUlfejI25Dp+Te\n\
4REASKcCgYBl7zJJrzv+lC0rpD3/S1lRtKzGz2AEhiAKNozr3S0lEExQ9RymqBls\n\
AQ4qyE2gZcps6isgmuQ4MKF0EASHlwGwQ5FJoGwO6prhjrvTXTwL1bCh23RJoj0V\n\
67hsGzNpAPiLwiB0cV54cwaNZfUhb22rT+j+w6ANFYNSr8QqbqUqSQKBgEBYeBJ9\n\
MbDUs4VTwvVM1EJmYtWM2HJggXvgJHXxzwd0cvTITiasbZw0iekskXSLOgJZthzF\n\
cabQhsj+sYl3z63vYUyjjp2IA274LaYJkoIH2V1Bzd//N+q9yt0ocXF6jJOwKb55\n\
q7B7wWp/V2TUTSd5+ZSIQ4QI1yWIaB1j87nrAoGAFGxaJwdi2cfUcOQjVaSADRty\n\
O311Qz9D8V3jmROT21RAIAXA3tqtB3zltCIZ+4HLCnp8Kt/hvOUOWiYJh0hkdni9\n\
vVhEpR7JeFVetsizyznNgvkmLQ2jV6lqH9hhBQ4a2jCUUApYz1DNKOpzWarzf668\n\
EEXbAdl03Vapu3XrV4I=\n\
-----END PRIVATE KEY-----\n\
";

/// The public half of [`RSA_PRIVATE`].
pub const RSA_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEApYyOEMeI+MixT/3SCu+d\n\
2+A7jtZZJ2JRf9WuuXIWVShNOmbEfq0mDa85sFnqcBgL7dMo4WKZTgPUi2ESg3V3\n\
q7q/YypIPmf5VTD0wZoGvAZZChWKWSmqmP4ylowuhSbHDlNpWYoonVzxrCwZXvkV\n\
w5crN+S9pHjL8543iIMBbCMF0XlwJiIcbXG7M/SLNXdw8RkrisS2O8taFCorFVM3\n\
vcLZQ76/07CI+0yiiJ5XH0jLnFKZq1JYwXjFiBOMXU7LMxfj3QedvrEA9LE5Q4Ip\n\
kwUfDIqxjzJ+aMGsb3IytSNueXV1fxdlppe231U93cSi1wjE3NskBonBgcp/tTx4\n\
2QIDAQAB\n\
-----END PUBLIC KEY-----\n\
";

/// [`EC_PRIVATE`] in SEC1 form (`openssl ec -in pkcs8.pem`).
pub const EC_SEC1: &str = "\
-----BEGIN EC PRIVATE KEY-----\n\
MHcCAQEEIGBeiGbCOp9qhO43vQu+jZO62nY3x0BOxAPz/clc2OgNoAoGCCqGSM49\n\
AwEHoUQDQgAEB0QHDkOPpv9Wrfz4HFiULltYLUFYCnaB2T598176qufOkLU7kwB4\n\
nU5YI/FXNIQcauNCvEoAn7HJs5+r1nEuqg==\n\
-----END EC PRIVATE KEY-----\n\
";

/// What `openssl ecparam -genkey -name prime256v1` writes: the curve's parameters,
/// then the SEC1 key.
pub const EC_SEC1_WITH_PARAMETERS: &str = "\
-----BEGIN EC PARAMETERS-----\n\
BggqhkjOPQMBBw==\n\
-----END EC PARAMETERS-----\n\
-----BEGIN EC PRIVATE KEY-----\n\
MHcCAQEEIImENlCd2q/YWmHnsN654wlNbetVRfcpKuqgNzYvob6voAoGCCqGSM49\n\
AwEHoUQDQgAEghb06GUtkhpACZK9e+JT8cUXe7A5d2F9j+DnROyt1EDuTyxs6l/T\n\
fHZJLa/jVJzXkMYWPw6lq5X7rxFqKNIaXQ==\n\
-----END EC PRIVATE KEY-----\n\
";

/// The public half of [`EC_SEC1_WITH_PARAMETERS`].
pub const EC_WITH_PARAMETERS_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEghb06GUtkhpACZK9e+JT8cUXe7A5\n\
d2F9j+DnROyt1EDuTyxs6l/TfHZJLa/jVJzXkMYWPw6lq5X7rxFqKNIaXQ==\n\
-----END PUBLIC KEY-----\n\
";

/// A P-384 key (SEC1): ES256 needs P-256.
pub const P384_SEC1: &str = "\
-----BEGIN EC PRIVATE KEY-----\n\
MIGkAgEBBDDeMFlJmAcZWITfrJc0vXq9zSlNQeXrDMYUrVcVvTFtHlMUvPq/fHPt\n\
A0oyXKP8/4+gBwYFK4EEACKhZANiAAQJd+ShwFFqlK9pS/goAe3aB8BXcixHlvx9\n\
J7pDA28aF1x6a96vada3/SXYsQJUropOwJTi5sYkUsN1bvl/qwlcX8IrYgwyE8hX\n\
pDQmZnj5NKrGAwMsUTbyUVZPOZDUwRI=\n\
-----END EC PRIVATE KEY-----\n\
";

/// An Ed25519 key (PKCS#8): not an algorithm the server verifies.
pub const ED25519: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MC4CAQAwBQYDK2VwBCIEIEYRMgNof+ZJF11tnSymERu+rsNYxRe7WJ3W7wl+IXbr\n\
-----END PRIVATE KEY-----\n\
";
