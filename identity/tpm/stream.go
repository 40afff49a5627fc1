// SPDX-License-Identifier: Apache-2.0
// Copyright 2026 The d2c Authors

package tpm

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"time"
)

// TPM 2.0 responses start with a 10-byte header: tag (2 bytes), size of
// the whole response (4), response code (4) (TPM 2.0 Part 1, section 18).
const (
	responseHeaderSize = 10
	// maxResponse bounds a response. TPMs report their limit as
	// TPM_PT_MAX_RESPONSE_SIZE, 4096 bytes on common parts.
	maxResponse = 64 << 10
	// commandTimeout bounds one command and its response. Key creation on
	// a slow discrete TPM takes seconds.
	commandTimeout = 60 * time.Second
)

// streamTPM sends TPM 2.0 commands over a connection that carries raw
// command and response buffers, as swtpm's --server socket does (the
// framing of the tpm2-tss "swtpm" TCTI; the simulator's control channel is
// not used). It reads each response to its full length, and a command that
// gets no answer within commandTimeout fails instead of hanging.
type streamTPM struct {
	conn net.Conn
}

func dialStream(addr string) (*streamTPM, error) {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	return &streamTPM{conn: conn}, nil
}

// Send implements transport.TPM.
func (s *streamTPM) Send(cmd []byte) ([]byte, error) {
	if err := s.conn.SetDeadline(time.Now().Add(commandTimeout)); err != nil {
		return nil, err
	}
	if _, err := s.conn.Write(cmd); err != nil {
		return nil, fmt.Errorf("send command: %w", err)
	}
	var hdr [responseHeaderSize]byte
	if _, err := io.ReadFull(s.conn, hdr[:]); err != nil {
		return nil, fmt.Errorf("read response: %w", err)
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < responseHeaderSize || size > maxResponse {
		return nil, fmt.Errorf("read response: size %d out of bounds", size)
	}
	rsp := make([]byte, size)
	copy(rsp, hdr[:])
	if _, err := io.ReadFull(s.conn, rsp[responseHeaderSize:]); err != nil {
		return nil, fmt.Errorf("read response: %w", err)
	}
	return rsp, nil
}

// Close implements transport.TPMCloser.
func (s *streamTPM) Close() error { return s.conn.Close() }
