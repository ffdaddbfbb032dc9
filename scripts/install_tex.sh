#!/usr/bin/env bash
# Installs pdflatex and booktabs (Debian's texlive-latex-base and texlive-latex-recommended), which the
# report's LaTeX test (tests/test_report.py::test_tex_tables_fit_linewidth) compiles the generated tables
# with. Idempotent: does nothing when pdflatex and booktabs are already there. Needs root (CI runs as root).
set -euo pipefail
if command -v pdflatex >/dev/null 2>&1 && kpsewhich booktabs.sty >/dev/null 2>&1; then
    echo "pdflatex and booktabs already installed"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends texlive-latex-base texlive-latex-recommended
pdflatex --version | head -1
