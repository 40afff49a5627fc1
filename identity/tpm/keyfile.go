// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package tpm

import (
	"bytes"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// keyFilePEMType is the PEM type of a TSS2 key file.
const keyFilePEMType = "TSS2 PRIVATE KEY"

// maxKeyFile bounds a key file read from disk. An ECC key's file is about
// 500 bytes; TPM2B structures are at most 64 KiB each.
const maxKeyFile = 16 << 10

// oidLoadableKey is id-loadablekey (draft-bottomley-tpm2-keys section 3.1):
// a key whose private area is wrapped by its parent, loaded with TPM2_Load.
var oidLoadableKey = asn1.ObjectIdentifier{2, 23, 133, 10, 1, 3}

// keyFile is the TPMKey structure of draft-bottomley-tpm2-keys, section 3.1:
//
//	TPMKey ::= SEQUENCE {
//	    type        OBJECT IDENTIFIER,
//	    emptyAuth   [0] EXPLICIT BOOLEAN OPTIONAL,
//	    policy      [1] EXPLICIT SEQUENCE OF TPMPolicy OPTIONAL,
//	    secret      [2] EXPLICIT OCTET STRING OPTIONAL,
//	    authPolicy  [3] EXPLICIT SEQUENCE OF TPMAuthPolicy OPTIONAL,
//	    description [4] EXPLICIT UTF8String OPTIONAL,
//	    rsaParent   [5] EXPLICIT BOOLEAN OPTIONAL,
//	    parent      INTEGER,
//	    pubkey      OCTET STRING,
//	    privkey     OCTET STRING
//	}
//
// pubkey and privkey hold the TPM2B_PUBLIC and TPM2B_PRIVATE, size
// included. This package writes type, emptyAuth, parent, pubkey and
// privkey; it reads the optional fields only to refuse the policies and
// secrets it cannot satisfy.
type keyFile struct {
	Type        asn1.ObjectIdentifier
	EmptyAuth   bool          `asn1:"optional,explicit,tag:0"`
	Policy      asn1.RawValue `asn1:"optional,explicit,tag:1"`
	Secret      asn1.RawValue `asn1:"optional,explicit,tag:2"`
	AuthPolicy  asn1.RawValue `asn1:"optional,explicit,tag:3"`
	Description string        `asn1:"optional,explicit,tag:4,utf8"`
	RSAParent   bool          `asn1:"optional,explicit,tag:5"`
	Parent      int64
	PubKey      []byte
	PrivKey     []byte
}

// keyBlob is a key as TPM2_Create returned it.
type keyBlob struct {
	public  tpm2.TPM2BPublic
	private tpm2.TPM2BPrivate
}

// marshalKeyFile encodes a key whose parent is the owner hierarchy's
// standard SRK as a PEM TSS2 key file.
func marshalKeyFile(k *keyBlob) ([]byte, error) {
	der, err := asn1.Marshal(keyFile{
		Type:      oidLoadableKey,
		EmptyAuth: true,
		Parent:    int64(tpm2.TPMRHOwner),
		PubKey:    tpm2.Marshal(k.public),
		PrivKey:   tpm2.Marshal(k.private),
	})
	if err != nil {
		return nil, fmt.Errorf("tpm: encode key file: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: keyFilePEMType, Bytes: der}), nil
}

// errKeyFile reports a key file this package cannot use.
var errKeyFile = errors.New("tpm: malformed key file")

// parseKeyFile decodes a PEM TSS2 key file written by [marshalKeyFile]. It
// refuses anything else: another key type or parent, an authorization
// value, a policy, trailing data.
func parseKeyFile(data []byte) (*keyBlob, error) {
	block, rest := pem.Decode(data)
	if block == nil || block.Type != keyFilePEMType {
		return nil, fmt.Errorf("%w: no %q PEM block", errKeyFile, keyFilePEMType)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%w: data after the PEM block", errKeyFile)
	}
	var kf keyFile
	trailing, err := asn1.Unmarshal(block.Bytes, &kf)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errKeyFile, err)
	}
	switch {
	case len(trailing) != 0:
		return nil, fmt.Errorf("%w: data after the TPMKey structure", errKeyFile)
	case !kf.Type.Equal(oidLoadableKey):
		return nil, fmt.Errorf("%w: type %v is not a loadable key", errKeyFile, kf.Type)
	case !kf.EmptyAuth:
		return nil, fmt.Errorf("%w: the key needs an authorization value", errKeyFile)
	case len(kf.Policy.FullBytes) != 0, len(kf.Secret.FullBytes) != 0, len(kf.AuthPolicy.FullBytes) != 0:
		return nil, fmt.Errorf("%w: the key has a policy", errKeyFile)
	case kf.RSAParent || kf.Parent != int64(tpm2.TPMRHOwner):
		return nil, fmt.Errorf("%w: parent 0x%x is not the owner hierarchy's ECC SRK", errKeyFile, kf.Parent)
	}
	pub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](kf.PubKey)
	if err != nil || !bytes.Equal(tpm2.Marshal(*pub), kf.PubKey) {
		return nil, fmt.Errorf("%w: public area", errKeyFile)
	}
	priv, err := tpm2.Unmarshal[tpm2.TPM2BPrivate](kf.PrivKey)
	if err != nil || !bytes.Equal(tpm2.Marshal(*priv), kf.PrivKey) {
		return nil, fmt.Errorf("%w: private area", errKeyFile)
	}
	return &keyBlob{public: *pub, private: *priv}, nil
}
