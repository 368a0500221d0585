"""What the server keeps on disk: blobs, version directories, the registry, upload records.

Names and places come from :mod:`modelpkg.layout`; nothing here knows about HTTP.
"""
