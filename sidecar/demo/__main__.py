import sys

from sidecar.demo.command import _standalone

sys.exit(_standalone())
