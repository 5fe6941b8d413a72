# Documents of every run also go to bluesky's 0MQ proxy (`magscope proxy`, started by
# `magscope ipython` and `magscope qserver` when absent), so a viewer in another process
# sees runs from IPython and from the queue alike. Nothing waits if no proxy listens.
import os

from bluesky.callbacks.zmq import Publisher

document_publisher = Publisher(os.environ.get("MAGSCOPE_PROXY_IN", "127.0.0.1:5577"))
RE.subscribe(document_publisher)
