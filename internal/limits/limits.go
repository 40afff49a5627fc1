// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

// Package limits is the one table of input bounds used across d2c.
//
// Every decoder of bytes from outside the process reads at most the bound
// named here plus one byte, so that an oversized input is detected rather
// than truncated. Changing a value here changes it everywhere.
package limits

const (
	// DeviceIDMaxLen is the longest device ID, in bytes. A device ID becomes
	// an MQTT topic level and a certificate common name (at most 64 bytes by
	// RFC 5280's ub-common-name).
	DeviceIDMaxLen = 64

	// ESTRequestBody bounds a base64 PKCS#10 request body on the registrar.
	ESTRequestBody = 16 << 10

	// ESTResponseBody bounds a base64 PKCS#7 response read by the EST client.
	ESTResponseBody = 256 << 10

	// CertsPerBundle bounds the certificates in one PKCS#7 certs-only
	// bundle or PEM chain.
	CertsPerBundle = 16

	// Token bounds an enrollment token (a compact JWS) in bytes.
	Token = 4 << 10

	// AuthorizationHeader bounds the HTTP Authorization header the
	// registrar parses.
	AuthorizationHeader = 6 << 10

	// PEMFile bounds a key or certificate PEM file read from disk.
	PEMFile = 256 << 10

	// StateFile bounds a persisted CBOR state file.
	StateFile = 16 << 20

	// UsedTokens bounds the number of unexpired token IDs the registrar
	// remembers; past it, enrollment is refused rather than forgetting.
	// Its snapshot (about 30 bytes an entry) must fit in StateFile.
	UsedTokens = 250_000

	// RevokedCerts bounds the number of revoked certificates in one CRL.
	RevokedCerts = 1 << 20

	// Envelope bounds a telemetry or command envelope (JWS, or JWE around
	// one) as received.
	Envelope = 256 << 10

	// Readings bounds the readings batched in one telemetry envelope.
	Readings = 1024

	// ReadingBody bounds one reading's application body.
	ReadingBody = 64 << 10

	// BodyJSONDepth bounds the nesting of the JSON body of a reading of a
	// reserved stream (consent events, security reports, command
	// results) and of an update report.
	BodyJSONDepth = 8

	// MQTTPacket bounds every MQTT packet a d2c client (device or cloud
	// service) reads from a broker, fixed header included: an envelope
	// (Envelope) plus 64 KiB for its topic and properties. It is
	// advertised as the Maximum Packet Size in CONNECT (MQTT v5 section
	// 3.1.2.11.4); a broker that sends a larger packet breaks the protocol
	// and is disconnected before anything of that size is allocated.
	MQTTPacket = Envelope + 64<<10
)

// outbox: the device's durable telemetry queue (outbox.Outbox).
const (
	// OutboxMessages is the default bound on the messages an outbox
	// stores; past it, Append is refused and nothing stored is dropped.
	OutboxMessages = 100_000

	// OutboxBytes is the default bound on the topic and payload bytes an
	// outbox stores.
	OutboxBytes = 32 << 20

	// OutboxRecord bounds one record of an outbox file (a message, or a
	// batch of removed IDs), framing excluded. Append refuses a message
	// whose record would be larger; the opener reads no more than this.
	OutboxRecord = 256 << 10

	// OutboxSegment is the default size at which the outbox starts a new
	// segment file.
	OutboxSegment = 4 << 20

	// OutboxSegmentMax bounds the configurable segment size.
	OutboxSegmentMax = 64 << 20
)

// update: signed metadata as received by the device (package update). Each
// document is checked against its bound before it is parsed.
const (
	// UpdateRoot bounds a signed root metadata document in bytes.
	UpdateRoot = 64 << 10

	// UpdateTimestamp bounds a signed timestamp metadata document.
	UpdateTimestamp = 16 << 10

	// UpdateRelease bounds a signed release metadata document.
	UpdateRelease = 256 << 10

	// UpdateKeys bounds the public keys one root lists.
	UpdateKeys = 32

	// UpdateSignatures bounds the signatures on one document (a root
	// rotation carries the old and the new root keys' signatures).
	UpdateSignatures = 16

	// UpdateArtifacts bounds the artifacts of one release.
	UpdateArtifacts = 64

	// UpdateRootChain bounds the root versions walked in one update cycle
	// (the TUF specification's Y in step 5.3.3).
	UpdateRootChain = 1024

	// UpdateName bounds an artifact name and a hardware class, in bytes.
	UpdateName = 128

	// UpdateURI bounds an artifact URI, in bytes.
	UpdateURI = 1024

	// UpdateJSONDepth bounds the nesting of a metadata JSON document.
	UpdateJSONDepth = 8

	// UpdateDeltas bounds the deltas one release lists.
	UpdateDeltas = 16

	// UpdateDeltaBlockMin and UpdateDeltaBlock bound the block size of a
	// delta container: the target bytes each of its zstd frames builds.
	UpdateDeltaBlockMin = 64 << 10
	UpdateDeltaBlock    = 4 << 20

	// UpdateDeltaDict bounds the base region one delta frame uses as its
	// dictionary: with a block, a frame and the decoder's tables, what a
	// device holds in memory while it patches, whatever the image size.
	UpdateDeltaDict = 16 << 20

	// UpdateDeltaWindow bounds the Window_Size a delta's zstd frame
	// declares (RFC 8878 section 3.1.1.1.2). A frame needs no window past
	// its own block: the past is the dictionary.
	UpdateDeltaWindow = 8 << 20

	// UpdateSBOM bounds the SBOM file a release may carry (its signed
	// "sbom" length), and what a reader of one (d2c update release sign,
	// d2c fleet affected) reads.
	UpdateSBOM = 16 << 20
)

// sbom: CycloneDX JSON SBOMs read by the operator tools (internal/sbom).
const (
	// SBOMComponents bounds the components of one SBOM, nested ones
	// included.
	SBOMComponents = 100_000

	// SBOMDepth bounds the nesting of components within components.
	SBOMDepth = 16

	// SBOMText bounds a component's name, version and purl, in bytes.
	SBOMText = 1024
)

// attestation: Entity Attestation Tokens (package identity/attest).
const (
	// AttestationToken bounds an attestation token (a compact JWS) in
	// bytes, as received by the verifier.
	AttestationToken = 4 << 10

	// AttestationText bounds a text claim of an attestation token
	// (software name, software version), in bytes.
	AttestationText = 128

	// AttestationNonces is the default bound on the challenges an
	// in-memory attestation verifier keeps outstanding; past it,
	// Challenge is refused (expired ones are forgotten first).
	AttestationNonces = 100_000

	// AttestationNoncesPerDevice is the default bound on one device's
	// outstanding challenges; a new one evicts the device's oldest.
	AttestationNoncesPerDevice = 4
)

// audit: the device's tamper-evident audit log (package identity/audit).
const (
	// AuditRecord bounds one encoded audit record (framing excluded).
	// Append refuses a larger record; readers read no more than this.
	AuditRecord = 4 << 10

	// AuditDetail bounds the detail of one audit record: the bytes of
	// its keys and values together.
	AuditDetail = 1 << 10

	// AuditDetailEntries bounds the key-value pairs of one record's detail.
	AuditDetailEntries = 16

	// AuditSegment is the default size at which the audit log starts a
	// new segment file.
	AuditSegment = 256 << 10

	// AuditSegmentMax bounds the configurable segment size.
	AuditSegmentMax = 16 << 20

	// AuditLogBytes is the default bound on the bytes of all segments of
	// an audit log; past it, the oldest segments are deleted.
	AuditLogBytes = 4 << 20

	// AuditLogMax bounds the configurable log size and what a verifier
	// reads of one log (a directory or an exported stream).
	AuditLogMax = 64 << 20

	// AuditSegments bounds the segment files of one audit log that a
	// verifier reads.
	AuditSegments = 4096

	// AuditHeadToken bounds a signed audit head (a compact JWS) in bytes.
	AuditHeadToken = 2 << 10
)
