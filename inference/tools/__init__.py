"""Research and evaluation tools, kept out of the serving modules: python -m inference.tools.*"""
