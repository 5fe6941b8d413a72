# The viewer's commands (add, move, remove a bead; auto-select; magnet, rotation, force and
# focus moves) reach this session through a small endpoint on 127.0.0.1, announced to the
# viewer in a private discovery file; each runs its plan stub (add_bead, move_bead, ...)
# and is refused while a plan runs. IPython only: in the queueserver the viewer goes
# through the queue's API instead (`magscope qserver` announces it).
if interactive:
    from magscope_session._command_server import start_command_server as _start_commands

    viewer_commands = _start_commands(RE, microscope, instance_from_env())
    close_at_exit(viewer_commands.close, priority=30)
