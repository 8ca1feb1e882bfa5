from setuptools import find_packages, setup

setup(name='crossformer_mm', version='0.1.0', packages=find_packages(include=['crossformer_mm*']))
