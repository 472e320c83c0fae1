"""The media plane: RTP/RTCP sockets, jitter buffer, codecs, PCM per stream."""
