# Ordinary refusals (a plan's bad argument, an axis refusing a target, a camera that has
# failed) print one line at the IPython prompt instead of bluesky's "Run aborted" traceback
# and IPython's; any other error keeps its traceback. IPython only: in the queueserver's
# worker the logs keep everything.
if interactive:
    from IPython import get_ipython as _get_ipython

    from magscope_session._refusals import install as _install_refusals

    if _get_ipython() is not None:
        _install_refusals(_get_ipython())
