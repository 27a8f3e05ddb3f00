// The system's zlib (Debian's zlib1g-dev) for permessage-deflate: raw deflate streams, with the
// initialisation macros Swift cannot call wrapped as functions.
#ifndef CKEEL_ZLIB_H
#define CKEEL_ZLIB_H

#include <zlib.h>

/// deflateInit2 for a raw stream (no zlib header) with `window_bits` (9...15) and `mem_level` (1...9).
int ckeel_deflate_init(z_stream *stream, int level, int window_bits, int mem_level);

/// inflateInit2 for a raw stream with `window_bits` (8...15).
int ckeel_inflate_init(z_stream *stream, int window_bits);

#endif
