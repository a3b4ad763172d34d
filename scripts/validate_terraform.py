"""`make validate-terraform`: the real `terraform validate` on a copy of terraform/, offline, against a
stand-in hashicorp/aws that serves the provider's schema (objdetect_tools.terraform_validate).

    python scripts/validate_terraform.py                    # the stand-in; the schema is built once (PyPI)
    python scripts/validate_terraform.py --real-provider    # the real provider, where registry.terraform.io is reachable
"""

import sys

from objdetect_tools.terraform_validate import main

if __name__ == "__main__":
    sys.exit(main())
