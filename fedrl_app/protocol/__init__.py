"""The wire: message keys, record helpers, codecs, metadata, experience and payload checks shared by server and clients."""
