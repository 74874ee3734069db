"""Puts Tests/ on the import path so every Python suite shares tests' helpers (qs_ports)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
